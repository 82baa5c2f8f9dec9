"""The d-RLAIF scorer (Lee et al. 2023, §2.3): the labeler LLM's score is the reward.

The model sees the score prompt (:func:`rlaif_trainer.feedback.prompts.score_head` / ``score_body``, ending
``Score (1-10)=``). The reward is the probability-weighted score ``E = Σ_i i·P(i)`` over the score
tokens 1..N (N = 10 by default), normalised to [-1, 1] as ``2·(E − 1)/(N − 1) − 1``.

Multi-token scores. In SmolLM2's tokenizer (and any tokenizer that splits digits) "10" is the two
tokens "1", "0", so the next-token distribution cannot tell "1" from the start of "10". We score
each candidate by the probability of its **full token sequence** followed by a stop:

* for candidates that are not a prefix of another candidate: ``P(tokens)`` (chain rule);
* for a candidate that is a prefix of others (here "1", a prefix of "10"): ``P(tokens)`` times the
  probability that no further digit follows (``P("1") · (1 − Σ_d P(d | "1"))`` over the digit
  tokens d = "0".."9"), i.e. "1" followed by something that ends the number. "1" then "5" is the
  start of "15", not a score of 1, so it must not count towards 1 (it is off the scale and drops
  out in the renormalisation).

These probabilities are renormalised over the N candidates. For "1".."10" this needs one forward
pass per item: the score prompt with "1" appended, reading the distribution at the last two
positions. ``scale=9`` (scores 1-9, all single tokens) is offered as the simpler alternative.

The pointwise ``P(Yes)`` score of :class:`rlaif_trainer.feedback.base.PointwiseLabelerBase.score` is the
other direct reward on offer (``labeler.mode: pointwise``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.prefix import PrefixScorer

__all__ = ["DirectScorer", "expected_score", "normalize_score"]


def normalize_score(expected: float, scale: int = 10) -> float:
    """Map an expected score in [1, scale] to [-1, 1]."""
    return 2.0 * (expected - 1.0) / (scale - 1.0) - 1.0


def expected_score(probs: Sequence[float]) -> float:
    """Σ i·p_i for scores 1..len(probs) (``probs`` need not be normalised)."""
    total = sum(probs)
    if total <= 0:
        raise ValueError("no probability mass on the score tokens")
    return sum((i + 1) * p for i, p in enumerate(probs)) / total


class DirectScorer:
    """Batched d-RLAIF scores from a local causal LM (see the module docstring for "10")."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        preamble: str | None = None,
        scale: int = 10,
        batch_size: int = 8,
        use_prefix_cache: bool = True,
        use_chat_template: bool = True,
    ) -> None:
        if not 2 <= scale <= 99:
            raise ValueError("scale must be between 2 and 99")
        self.scale = scale
        self.tokenizer = tokenizer
        self.fmt = P.ChatFormatter(tokenizer, use_chat_template=use_chat_template)
        self.head = P.score_head(preamble, scale=scale)
        self.ending = P.score_ending(scale)
        self.scorer = PrefixScorer(model, tokenizer, batch_size=batch_size, use_prefix_cache=use_prefix_cache)
        self.cands = [list(tokenizer.encode(str(i), add_special_tokens=False)) for i in range(1, scale + 1)]
        for i, c in enumerate(self.cands):
            if not c:
                raise ValueError(f"score {i + 1} encodes to no tokens")
        # The extension appended to every item: the longest candidate minus its last token. All
        # multi-token candidates must share it as a prefix (true for digit-splitting tokenizers,
        # where they are "10".."99" → we require a common first-token path of length ≤ 1 here).
        multi = [c for c in self.cands if len(c) > 1]
        self.ext: list[int] = []
        if multi:
            longest = max(len(c) for c in multi)
            if longest > 2:
                raise ValueError("scores of more than two tokens are not supported; use scale=9")
            firsts = {c[0] for c in multi}
            if len(firsts) != 1:
                raise ValueError(
                    "multi-token scores with different first tokens need one pass each; use scale=9 "
                    f"(got first tokens {sorted(firsts)})"
                )
            self.ext = [multi[0][0]]
        # Tokens that continue a number after the extension: every single-token digit (a tokenizer
        # that does not split digits has no extension, so this is only read with one).
        self.digit_ids: list[int] = []
        if self.ext:
            for d in "0123456789":
                ids = list(tokenizer.encode(d, add_special_tokens=False))
                if len(ids) == 1:
                    self.digit_ids.append(ids[0])
        # Token ids to read: every candidate's first token (position -2 with ext, else -1), and the
        # second tokens of multi-token candidates and the digits (position -1).
        self.read_ids = sorted({c[0] for c in self.cands} | {c[1] for c in multi} | set(self.digit_ids))

    def candidate_probs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Normalised P(score = i), i = 1..scale, per item."""
        texts = [
            self.fmt.parts(self.head, P.score_body(p, r), self.ending).text
            for p, r in zip(prompts, responses, strict=True)
        ]
        head = self.fmt.parts(self.head, "", "").head
        n_last = 2 if self.ext else 1
        lps = self.scorer.logprobs_texts(head, texts, self.read_ids, n_last=n_last, extra_ids=self.ext)
        col = {t: j for j, t in enumerate(self.read_ids)}
        out = []
        for lp in lps:
            first = {t: math.exp(lp[0][col[t]]) for t in self.read_ids}  # after the score prompt
            after = {t: math.exp(lp[1][col[t]]) for t in self.read_ids} if self.ext else None
            out.append(self.combine(first, after))
        return out

    def combine(self, first: dict[int, float], after_ext: dict[int, float] | None) -> list[float]:
        """Normalised P(score = i) from the next-token probabilities after the score prompt
        (``first``) and after the prompt plus the extension token (``after_ext``), by token id."""
        probs = []
        for c in self.cands:
            p_first = first[c[0]]
            if len(c) == 1:
                if self.ext and c[0] == self.ext[0] and after_ext is not None:
                    # Any digit after "1" makes another number ("10", or "15": off the scale).
                    cont = sum(after_ext[d] for d in self.digit_ids)
                    probs.append(p_first * max(0.0, 1.0 - cont))
                else:
                    probs.append(p_first)
            else:
                assert after_ext is not None
                probs.append(p_first * after_ext[c[1]])
        total = sum(probs)
        return [x / total for x in probs] if total > 0 else [1.0 / self.scale] * self.scale

    def expected(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [expected_score(p) for p in self.candidate_probs(prompts, responses)]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Rewards in [-1, 1]."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        return [normalize_score(e, self.scale) for e in self.expected(prompts, responses)]
