"""Reading the job's prompt files, and the train / held-out split that RL and evaluation share.

``dataset.evalPrompts`` names the held-out prompts; when it is unset, the last 10% of
``dataset.prompts`` (at least one prompt) are held out and excluded from training, as the API
documents.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_prompts", "split_prompts"]


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """The prompt texts of a JSONL file (bad input names the file and line)."""
    from rlaif_trainer.data import read_prompts as _read

    return [r["prompt"] for r in _read(path, field=field)]


def split_prompts(spec) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` prompts of a resolved :class:`~rlaif_trainer.spec.RLAIFJobSpec`."""
    ds = spec.dataset
    prompts = read_prompts(ds.prompts, ds.prompt_field)
    if ds.eval_prompts:
        held_out = read_prompts(ds.eval_prompts, ds.prompt_field)
        train = prompts
    else:
        n_eval = max(1, len(prompts) // 10) if len(prompts) > 1 else 0
        train, held_out = prompts[: len(prompts) - n_eval], prompts[len(prompts) - n_eval :]
        if not held_out:
            held_out = list(train)
    if ds.max_prompts is not None:
        train = train[: ds.max_prompts]
    return train, held_out
