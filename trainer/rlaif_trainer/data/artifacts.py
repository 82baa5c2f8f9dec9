"""Stage artifacts, written atomically: work happens in ``<dir>.partial/`` (kept across restarts
so that a resumed stage continues where it stopped), which is renamed to ``<dir>/`` when the stage
finishes, and a ``DONE`` marker (holding the stage summary as JSON) is written last.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rlaif_api.summaries import StageSummary

#: The label stage's output file in its artifact directory, read by the reward stage.
LABELS_FILE = "labels.jsonl"
#: The sampled candidate pairs in the candidates artifact directory.
CANDIDATES_FILE = "candidates.jsonl"


DONE = "DONE"


def partial_dir(final: str | os.PathLike[str]) -> Path:
    f = Path(final)
    return f.with_name(f.name + ".partial")


def is_done(final: str | os.PathLike[str]) -> bool:
    return (Path(final) / DONE).is_file()


def read_done(final: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads((Path(final) / DONE).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def finalize_dir(
    work: str | os.PathLike[str], final: str | os.PathLike[str], summary: StageSummary | dict[str, Any]
) -> Path:
    """Rename ``work`` to ``final`` (replacing an unfinished ``final``), then write ``DONE``.

    ``summary`` is a stage's typed summary (stored as :meth:`StageSummary.to_message`, the same JSON
    as its termination message), or a plain record for an artifact that is not a stage's own (the
    sampled candidates)."""
    if isinstance(summary, StageSummary):
        summary = summary.to_message()
    w, f = Path(work), Path(final)
    if f.exists():
        shutil.rmtree(f)
    f.parent.mkdir(parents=True, exist_ok=True)
    os.replace(w, f)
    tmp = f / (DONE + ".tmp")
    tmp.write_text(json.dumps(summary, sort_keys=True, default=str))
    os.replace(tmp, f / DONE)
    return f


def trim_step_log(path: str | os.PathLike[str], upto: int) -> None:
    """Keep the lines of a per-step JSONL log (``{"step": n, ...}``) up to step ``upto``: a stage
    resumed from the checkpoint of step ``upto`` appends the later steps again. A line cut short
    by a kill mid-write is dropped too (it can only be a step after the checkpoint)."""
    p = Path(path)
    if not p.exists():
        return
    kept = []
    for line in p.read_text().splitlines():
        try:
            if line.strip() and json.loads(line)["step"] <= upto:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    p.write_text("".join(line + "\n" for line in kept))
