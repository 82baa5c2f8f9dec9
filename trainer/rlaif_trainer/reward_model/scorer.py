"""Rewards from a trained reward model: batched, length-sorted scoring, and the scorer RL uses."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer.reward_model.batching import _pad, encode_response


def _rewards(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> Any:
    """Scalar reward at the last real token of each (right-padded) sequence."""
    import torch

    ids, mask = _pad(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)  # no KV cache while training
    logits = out.logits
    if logits.dim() == 3:  # (B, L, 1) from a model that returns per-token scores
        last = mask.sum(-1) - 1
        logits = logits[torch.arange(len(seqs), device=device), last]
    return logits.view(-1).float()


def score_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 16,
) -> list[float]:
    """Rewards of (prompt, response) pairs with a loaded reward model (batched, length-sorted)."""
    import torch

    seqs = [encode_response(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                r = _rewards(model, [seqs[i] for i in idx], pad, dev).cpu().tolist()
                for i, v in zip(idx, r, strict=True):
                    out[i] = float(v)
    finally:
        if was_training:
            model.train()
    return out


def load_reward_scorer(
    path: str | os.PathLike[str], *, device: Any = None, batch_size: int = 16, max_length: int | None = None
) -> Callable[[list[str], list[str]], list[float]]:
    """A ``(prompts, responses) -> rewards`` function from a reward stage output directory."""
    from rlaif_trainer.modeling.loading import load_reward_model

    model, tok = load_reward_model(str(path), device=device)
    model.eval()
    meta_path = Path(path) / "reward_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    ml = max_length or int(meta.get("max_length", 512))

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        return score_texts(model, tok, prompts, responses, max_length=ml, batch_size=batch_size)

    return scorer
