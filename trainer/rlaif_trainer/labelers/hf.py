"""The ``hf`` provider: a local causal LM scores next-token log-probabilities.

:class:`PrefixScorer` is the engine. Every labeler prompt is ``head + body + tail``
(:class:`rlaif_trainer.prompts.PromptParts`); the head (chat header, preamble, few-shot exemplars)
is the same for every item. Its token ids are computed once and its keys/values are computed once
per head and reused for every batch (*prefix caching*); each batch then runs only the items'
bodies and tails, right-padded, at positions ``len(head) ..``. Items are sorted by length before
batching so that batches carry little padding. The token sequence is the concatenation of the
separately tokenized head and suffix in both the cached and the uncached path, so the two agree to
float precision (checked by the tests within 1e-4).

The cached keys/values assume fixed weights. A labeler that shares a model being trained (e.g. the
policy's base weights under ``disable_adapter()`` during RL) stays valid as long as it is always
called the same way; call ``clear_cache()`` (``labeler.scorer.clear_cache()``) after the weights
it sees change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from rlaif_trainer import prompts as P
from rlaif_trainer.labelers import InputTooLongError, PairwiseLabelerBase, PointwiseLabelerBase

__all__ = ["HFPairwiseLabeler", "HFPointwiseLabeler", "PrefixScorer", "single_token_id"]


def single_token_id(tokenizer: Any, text: str, *, what: str = "labeler") -> int:
    """The id of ``text`` if it is exactly one token for ``tokenizer``; else a clear ``ValueError``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(
            f"{what}: {text!r} is not a single token for the tokenizer of {name} (it encodes to {ids}); "
            "the soft label needs single-token answers. Use another labeler model, or pointwise mode / the "
            "python provider."
        )
    return int(ids[0])


def _model_context(model: Any) -> int:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 1 << 30


class PrefixScorer:
    """Batched next-token log-probabilities of ``head + suffix`` with the head's KV cache reused."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        use_prefix_cache: bool = True,
        max_length: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.use_prefix_cache = use_prefix_cache
        self.max_length = max_length or _model_context(model)
        self._head_ids: dict[str, list[int]] = {}
        self._head_cache: dict[str, Any] = {}

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def head_ids(self, head: str) -> list[int]:
        ids = self._head_ids.get(head)
        if ids is None:
            ids = self.encode(head)
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if (
                bos is not None
                and getattr(self.tokenizer, "add_bos_token", False)
                and (not ids or ids[0] != bos)
            ):
                ids = [bos, *ids]
            self._head_ids[head] = ids
        return ids

    def _prefix(self, head: str) -> Any:
        import torch

        cache = self._head_cache.get(head)
        if cache is None:
            ids = self.head_ids(head)
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            cache = out.past_key_values
            if len(self._head_cache) > 8:  # bounded: a labeler uses a handful of heads
                self._head_cache.clear()
            self._head_cache[head] = cache
        return cache

    def clear_cache(self) -> None:
        self._head_cache.clear()

    def logprobs(
        self,
        head: str,
        suffixes: Sequence[Sequence[int]],
        token_ids: Sequence[int],
        *,
        n_last: int = 1,
    ) -> list[list[list[float]]]:
        """Log-probabilities of ``token_ids`` at each of the last ``n_last`` positions of every item.

        Returns ``out[item][pos][token]`` where ``pos = 0`` is the ``n_last``-th position from the end,
        and the last entry is the distribution after the final token. Log-softmax runs over the full
        vocabulary in fp32.
        """
        import torch

        head_len = len(self.head_ids(head))
        for i, s in enumerate(suffixes):
            if len(s) < n_last:
                raise ValueError(f"item {i}: suffix shorter than n_last={n_last}")
            if head_len + len(s) > self.max_length:
                raise InputTooLongError(i, head_len + len(s), self.max_length)
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        results: list[list[list[float]] | None] = [None] * len(suffixes)
        tok_idx = torch.tensor(list(token_ids), device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    batch = [list(suffixes[i]) for i in idx]
                    lp = self._batch(head, batch, tok_idx, n_last)
                    for j, i in enumerate(idx):
                        results[i] = lp[j]
        finally:
            if was_training:
                self.model.train()
        return results  # type: ignore[return-value]

    def _batch(self, head: str, batch: list[list[int]], tok_idx: Any, n_last: int) -> list[list[list[float]]]:
        """One forward pass. Suffixes are left-padded so that every row ends at the last position:
        the LM head then runs on the last ``n_last`` positions only (``logits_to_keep``)."""
        import torch

        dev = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bsz = len(batch)
        if self.use_prefix_cache:
            head_len = len(self.head_ids(head))
            L = max(len(s) for s in batch)
            ids = torch.full((bsz, L), pad, dtype=torch.long, device=dev)
            mask = torch.zeros((bsz, head_len + L), dtype=torch.long, device=dev)
            mask[:, :head_len] = 1
            pos = torch.full((bsz, L), head_len, dtype=torch.long, device=dev)
            for r, s in enumerate(batch):
                n = len(s)
                ids[r, L - n :] = torch.tensor(s, device=dev)
                mask[r, head_len + L - n :] = 1
                pos[r, L - n :] = torch.arange(head_len, head_len + n, device=dev)
            cache = copy.deepcopy(self._prefix(head))
            if bsz > 1:
                cache.batch_repeat_interleave(bsz)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=n_last,
            )
        else:
            hid = self.head_ids(head)
            full = [hid + s for s in batch]
            L = max(len(f) for f in full)
            ids = torch.full((bsz, L), pad, dtype=torch.long, device=dev)
            mask = torch.zeros((bsz, L), dtype=torch.long, device=dev)
            pos = torch.zeros((bsz, L), dtype=torch.long, device=dev)
            for r, f in enumerate(full):
                n = len(f)
                ids[r, L - n :] = torch.tensor(f, device=dev)
                mask[r, L - n :] = 1
                pos[r, L - n :] = torch.arange(n, device=dev)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=n_last
            )
        logits = out.logits[:, -n_last:].float()
        lp = torch.log_softmax(logits, dim=-1)[:, :, tok_idx]
        return lp.cpu().tolist()


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
        return self.fmt.parts(self.head, P.pairwise_body(prompt, first, second, rationale), P.PAIRWISE_ENDING)

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
        suffixes = []
        for p, a, b, r in zip(prompts, first, second, rats, strict=True):
            parts = self.parts(p, a, b, r)
            suffixes.append(self.scorer.encode(parts.body + parts.tail))
        lps = self.scorer.logprobs(self.fmt.parts(self.head, "", "").head, suffixes, self.ids)
        probs = []
        for lp in lps:
            l1, l2 = lp[-1]
            m = max(l1, l2)
            e1, e2 = math.exp(l1 - m), math.exp(l2 - m)
            probs.append(e1 / (e1 + e2))
        return probs, rats

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self._direct is None:
            from rlaif_trainer.scoring import DirectScorer

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
    ) -> None:
        super().__init__(principles)
        self.ids = [single_token_id(tokenizer, "Yes"), single_token_id(tokenizer, "No")]
        self.fmt = P.ChatFormatter(tokenizer, use_chat_template=use_chat_template)
        self.head = P.pointwise_head(preamble)
        self.ending = "" if self.fmt.chat else "Answer="
        self.scorer = PrefixScorer(model, tokenizer, batch_size=batch_size, use_prefix_cache=use_prefix_cache)

    def logodds(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        suffixes = []
        for p, r in zip(prompts, responses, strict=True):
            for q in self.principles:
                parts = self.fmt.parts(self.head, P.pointwise_body(p, r, q), self.ending)
                suffixes.append(self.scorer.encode(parts.body + parts.tail))
        try:
            lps = self.scorer.logprobs(self.fmt.parts(self.head, "", "").head, suffixes, self.ids)
        except InputTooLongError as err:
            k = len(self.principles)
            raise InputTooLongError(err.index // k, err.n_tokens, err.limit) from None
        k = len(self.principles)
        out = []
        for i in range(len(prompts)):
            out.append([lps[i * k + j][-1][0] - lps[i * k + j][-1][1] for j in range(k)])
        return out
