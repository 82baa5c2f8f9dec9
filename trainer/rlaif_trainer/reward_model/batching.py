"""Reward-model inputs: chat-formatted (prompt, response) token ids, the held-out split and
length-grouped batches."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

#: Held-out pairs the split keeps for the quality gate when the data allows (see :func:`split_pairs`).
MIN_HELD_OUT = 50


def encode_response(tokenizer: Any, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of (prompt as user turn, response as assistant turn), keeping the last ``max_length``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = list(tokenizer.encode(text, add_special_tokens=False))
    else:
        ids = list(tokenizer.encode(prompt + "\n" + response, add_special_tokens=True))
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids[-max_length:]


def split_pairs(
    pairs: Sequence[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded shuffle, then the first ``ceil(eval_fraction · n)`` pairs are held out: at least one
    when ``eval_fraction > 0`` and there are two pairs or more, and at least ``min(50, n // 2)``."""
    idx = list(range(len(pairs)))
    random.Random(f"split:{seed}").shuffle(idx)
    n_eval = math.ceil(eval_fraction * len(pairs)) if eval_fraction > 0 else 0
    if n_eval:
        # The quality gate's interval needs enough held-out pairs to exclude chance: at least
        # MIN_HELD_OUT of them, or half the pairs when there are fewer than 2 * MIN_HELD_OUT.
        n_eval = max(n_eval, min(MIN_HELD_OUT, len(pairs) // 2))
    if len(pairs) < 2:
        n_eval = 0
    n_eval = min(n_eval, len(pairs) - 1)
    ev = sorted(idx[:n_eval])
    tr = sorted(idx[n_eval:])
    return [pairs[i] for i in tr], [pairs[i] for i in ev]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, window: int = 50, min_batch: int = 1
) -> list[list[int]]:
    """Shuffle, sort by length (descending) within windows of ``window`` batches, cut, shuffle batches,
    then move the batch holding the longest item to the front.

    ``lengths`` are what a batch is padded to per item: for a pair, its longer response. The longest
    batch goes first, as in HF's ``LengthGroupedSampler``, so that running out of memory shows at
    step 1 rather than hours in.
    Batches smaller than ``min_batch`` (the last one) are dropped.
    """
    rng = random.Random(f"batches:{seed}:{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    span = max(batch_size * window, batch_size)
    batches: list[list[int]] = []
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s : s + span], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    batches = [b for b in batches if len(b) >= min_batch]
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]))
        batches.insert(0, batches.pop(longest))
    return batches


def _pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask
