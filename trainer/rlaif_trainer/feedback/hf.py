"""The ``hf`` provider: a local causal LM scores next-token log-probabilities.

:class:`PrefixScorer` is the engine. Every labeler prompt is ``head + body + tail``
(:class:`rlaif_trainer.feedback.prompts.PromptParts`); the head (chat header, preamble, few-shot exemplars)
is the same for every item. Its token ids are computed once and its keys/values are computed once
per head and reused for every batch (*prefix caching*); each batch then runs only the items'
bodies and tails, right-padded, at positions ``len(head) ..``. Items are sorted by length before
batching so that batches carry little padding.

Tokenisation: the labelers tokenise each item's *full* prompt text once and split the ids where
they stop agreeing with the head's own ids (:meth:`PrefixScorer.logprobs_texts`). Tokenising the
head and the rest separately would give other tokens at the seam: the head ends in ``"\n\n"``,
which SmolLM2's tokenizer encodes as one token alone but as two when the body's ``"Prompt"``
follows, and the pointwise log-odds moved by 0.16 on average. The cached and the uncached path run
the same ids, so the two agree to float precision (checked by the tests within 1e-4).

The cached keys/values assume fixed weights. A labeler that shares a model being trained (e.g. the
policy's base weights under ``disable_adapter()`` during RL) stays valid as long as it is always
called the same way; after the weights it sees change, call ``labeler.scorer.clear_cache()``, or
for a pointwise labeler ``labeler.clear_cache()``, which also forgets the information term's
per-prompt baselines (:mod:`rlaif_trainer.feedback.information`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.base import InputTooLongError, PairwiseLabelerBase, PointwiseLabelerBase
from rlaif_trainer.feedback.information import INFORMATION_TERM, PromptInformation
from rlaif_trainer.feedback.prefix import PrefixScorer, single_token_id

__all__ = ["HFPairwiseLabeler", "HFPointwiseLabeler"]


class HFPairwiseLabeler(PairwiseLabelerBase):
    """The paper's pairwise labeler on a local model: softmax over log P("1"), log P("2")."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        preamble: str = "base",
        few_shot: Sequence[Any] = (),
        chain_of_thought: bool = False,
        position_debias: bool = True,
        batch_size: int = 8,
        use_prefix_cache: bool = True,
        use_chat_template: bool = True,
        cot_max_new_tokens: int = 96,
    ) -> None:
        super().__init__(position_debias=position_debias)
        self.tokenizer = tokenizer
        self.model = model
        self.ids = [single_token_id(tokenizer, "1"), single_token_id(tokenizer, "2")]
        self.fmt = P.ChatFormatter(tokenizer, use_chat_template=use_chat_template)
        self.head = P.pairwise_head(preamble, few_shot, chain_of_thought=chain_of_thought)
        self.chain_of_thought = chain_of_thought
        self.cot_max_new_tokens = cot_max_new_tokens
        self.scorer = PrefixScorer(model, tokenizer, batch_size=batch_size, use_prefix_cache=use_prefix_cache)
        self.preamble = preamble
        self._direct: Any = None

    def parts(self, prompt: str, first: str, second: str, rationale: str | None = None) -> P.PromptParts:
        """The prompt read for the answer; with a ``rationale``, chain-of-thought's step two: step
        one's prompt (instruction included) with the rationale continuing the assistant turn."""
        if rationale is not None:
            return self.fmt.parts(self.head, P.cot_body(prompt, first, second), P.cot_ending(rationale))
        return self.fmt.parts(self.head, P.pairwise_body(prompt, first, second), P.PAIRWISE_ENDING)

    def _rationales(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[str]:
        import torch

        texts = [
            self.fmt.parts(self.head, P.cot_body(p, a, b), P.COT_ENDING).text
            for p, a, b in zip(prompts, first, second, strict=True)
        ]
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        out: list[str] = []
        try:
            bs = self.scorer.batch_size
            for s in range(0, len(texts), bs):
                enc = tok(texts[s : s + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(
                    self.scorer.device
                )
                with torch.no_grad():
                    gen = self.model.generate(
                        **enc,
                        max_new_tokens=self.cot_max_new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                new = gen[:, enc["input_ids"].shape[1] :]
                out.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = old_side
        return out

    def first_preferred(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[str | None]]:
        rats: list[str | None] = [None] * len(prompts)
        if self.chain_of_thought:
            rats = list(self._rationales(prompts, first, second))
        texts = [self.parts(p, a, b, r).text for p, a, b, r in zip(prompts, first, second, rats, strict=True)]
        lps = self.scorer.logprobs_texts(self.fmt.parts(self.head, "", "").head, texts, self.ids)
        probs = []
        for lp in lps:
            l1, l2 = lp[-1]
            m = max(l1, l2)
            e1, e2 = math.exp(l1 - m), math.exp(l2 - m)
            probs.append(e1 / (e1 + e2))
        return probs, rats

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self._direct is None:
            from rlaif_trainer.feedback.scoring import DirectScorer

            self._direct = DirectScorer(
                self.model, self.tokenizer, preamble=self.preamble, batch_size=self.scorer.batch_size
            )
        return self._direct.score(prompts, responses)


class HFPointwiseLabeler(PointwiseLabelerBase):
    """Pointwise yes/no principles on a local model: log-odds = log P("Yes") − log P("No")."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        principles: Sequence[str],
        preamble: str | None = None,
        batch_size: int = 8,
        use_prefix_cache: bool = True,
        use_chat_template: bool = True,
        information_weight: float = 0.0,
    ) -> None:
        super().__init__(principles)
        self.ids = [single_token_id(tokenizer, "Yes"), single_token_id(tokenizer, "No")]
        # One more log-odds column after the principles' (labeler.informationWeight; 0 = none): what
        # the response tells about its prompt (rlaif_trainer.feedback.information).
        self.information_weight = float(information_weight)
        self.information = (
            PromptInformation(model, tokenizer, batch_size=batch_size)
            if self.information_weight > 0
            else None
        )
        self.fmt = P.ChatFormatter(tokenizer, use_chat_template=use_chat_template)
        self.head = P.pointwise_head(preamble)
        self.ending = "" if self.fmt.chat else "Answer="
        self.scorer = PrefixScorer(model, tokenizer, batch_size=batch_size, use_prefix_cache=use_prefix_cache)

    def logodds(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        texts = [
            self.fmt.parts(self.head, P.pointwise_body(p, r, q), self.ending).text
            for p, r in zip(prompts, responses, strict=True)
            for q in self.principles
        ]
        try:
            lps = self.scorer.logprobs_texts(self.fmt.parts(self.head, "", "").head, texts, self.ids)
        except InputTooLongError as err:
            k = len(self.principles)
            raise InputTooLongError(err.index // k, err.n_tokens, err.limit) from None
        k = len(self.principles)
        out = []
        for i in range(len(prompts)):
            out.append([lps[i * k + j][-1][0] - lps[i * k + j][-1][1] for j in range(k)])
        if self.information is not None:
            info = self.information(prompts, responses)
            for row, x in zip(out, info, strict=True):
                row.append(self.information_weight * x)
        return out

    @property
    def term_names(self) -> list[str]:
        """What each log-odds column is: the principles, then the information term when it is on."""
        return self.principles + ([INFORMATION_TERM] if self.information is not None else [])

    def clear_cache(self) -> None:
        """Forget cached prefixes and prompt baselines (after the weights this labeler sees change)."""
        self.scorer.clear_cache()
        if self.information is not None:
            self.information.clear_cache()
