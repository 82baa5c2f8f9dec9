"""The job's prompt files, and the one train / held-out split that labelling, RL and evaluation share.

``dataset.evalPrompts`` names the held-out prompts; when it is unset, the last 10% of
``dataset.prompts`` (at least one prompt) are held out and excluded from training, as the API
documents. ``dataset.maxPrompts`` caps the prompts that get labelled pairs, not RL's.
"""

from __future__ import annotations

from typing import Any

from rlaif_trainer.data.records import read_prompts

__all__ = ["split_prompt_records", "split_prompts", "train_prompt_records"]


def split_prompt_records(spec: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)`` prompt records (``{"id", "prompt", "source"}``) of a resolved
    :class:`rlaif_api.RLAIFJobSpec`."""
    ds = spec.dataset
    records = read_prompts(ds.prompts, field=ds.prompt_field)
    if ds.eval_prompts:
        train, held_out = records, read_prompts(ds.eval_prompts, field=ds.prompt_field)
    else:
        n_eval = max(1, len(records) // 10) if len(records) > 1 else 0
        train, held_out = records[: len(records) - n_eval], records[len(records) - n_eval :]
        if not held_out:  # a single prompt is both trained and evaluated on
            held_out = list(train)
    return train, held_out


def split_prompts(spec: Any) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` prompt texts: :func:`split_prompt_records` without ids and sources."""
    train, held_out = split_prompt_records(spec)
    return [r["prompt"] for r in train], [r["prompt"] for r in held_out]


def train_prompt_records(spec: Any) -> list[dict[str, Any]]:
    """The training prompts the label stage samples candidate pairs for: the first
    ``dataset.maxPrompts`` of them. The cap is labelling's only; RL trains on every training prompt."""
    train = split_prompt_records(spec)[0]
    return train if spec.dataset.max_prompts is None else train[: spec.dataset.max_prompts]
