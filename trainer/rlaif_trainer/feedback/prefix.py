"""Next-token log-probabilities of many continuations after shared prefixes, batched with a KV
cache: the engine under the hf labelers and the d-RLAIF scorer."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from rlaif_trainer.feedback.base import InputTooLongError


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
        self._head_cache: dict[str | tuple[int, ...], Any] = {}

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

    def _prefix(self, head: str | tuple[int, ...]) -> Any:
        """The keys/values of ``head`` (a string, or the token ids of a shared prefix)."""
        import torch

        cache = self._head_cache.get(head)
        if cache is None:
            ids = list(head) if isinstance(head, tuple) else self.head_ids(head)
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            cache = out.past_key_values
            if len(self._head_cache) > 8:  # bounded: a labeler uses a handful of heads
                self._head_cache.clear()
            self._head_cache[head] = cache
        return cache

    def full_ids(self, text: str) -> list[int]:
        """The ids of a whole prompt text, with the BOS token where the tokenizer adds one."""
        ids = self.encode(text)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def logprobs_texts(
        self,
        head: str,
        texts: Sequence[str],
        token_ids: Sequence[int],
        *,
        n_last: int = 1,
        extra_ids: Sequence[int] = (),
    ) -> list[list[list[float]]]:
        """:meth:`logprobs` of whole prompt texts that all start with ``head``.

        Each text is tokenised in one piece (then ``extra_ids`` appended); the cached prefix is the
        longest run of the head's ids that every text's ids start with, so no item's tokens differ
        from those of its full text.
        """
        full = []
        for i, t in enumerate(texts):
            if not t.startswith(head):
                raise ValueError(f"item {i}: the text does not start with the shared head")
            full.append(self.full_ids(t) + list(extra_ids))
        hid = self.head_ids(head)
        k = len(hid)
        for f in full:
            j = 0
            while j < min(k, len(f)) and f[j] == hid[j]:
                j += 1
            k = j
        prefix = tuple(hid[:k])
        return self._logprobs(prefix, [f[k:] for f in full], token_ids, n_last=n_last)

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
        return self._logprobs(head, suffixes, token_ids, n_last=n_last)

    def _logprobs(
        self,
        head: str | tuple[int, ...],
        suffixes: Sequence[Sequence[int]],
        token_ids: Sequence[int],
        *,
        n_last: int = 1,
    ) -> list[list[list[float]]]:
        import torch

        head_len = len(head) if isinstance(head, tuple) else len(self.head_ids(head))
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

    def _batch(
        self, head: str | tuple[int, ...], batch: list[list[int]], tok_idx: Any, n_last: int
    ) -> list[list[list[float]]]:
        """One forward pass. Suffixes are left-padded so that every row ends at the last position:
        the LM head then runs on the last ``n_last`` positions only (``logits_to_keep``)."""
        import torch

        dev = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bsz = len(batch)
        hid = list(head) if isinstance(head, tuple) else self.head_ids(head)
        if self.use_prefix_cache:
            head_len = len(hid)
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
