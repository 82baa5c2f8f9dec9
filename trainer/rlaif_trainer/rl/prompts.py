"""Reading the job's prompt files, and the train / held-out split that RL and evaluation share.

``dataset.evalPrompts`` names the held-out prompts; when it is unset, the last 10% of
``dataset.prompts`` (at least one prompt) are held out and excluded from training, as the API
documents.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlaif_trainer.errors import BadInputError

__all__ = ["read_prompts", "split_prompts"]


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """The ``field`` of every JSON object in a JSONL file; bad input names the file and line."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: prompt file not found")
    prompts: list[str] = []
    with p.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str) or not obj[field].strip():
                raise BadInputError(
                    f"{p}:{lineno}: expected an object with a non-empty string field {field!r}"
                )
            prompts.append(obj[field])
    if not prompts:
        raise BadInputError(f"{p}: no prompts")
    return prompts


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
