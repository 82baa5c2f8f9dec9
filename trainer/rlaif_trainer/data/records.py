"""JSONL input/output shared by the stages, with bad-input errors that name the file and line.

Stage output directories are written atomically: work happens in ``<dir>.partial/`` (kept across
restarts so that a resumed stage continues where it stopped), which is renamed to ``<dir>/`` when
the stage finishes, and a ``DONE`` marker (holding the stage summary as JSON) is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlaif_trainer.errors import BadInputError

__all__ = [
    "JsonlAppender",
    "claim_id",
    "pair_id",
    "probability_field",
    "read_jsonl",
    "read_pairs",
    "read_prompts",
]


def read_jsonl(
    path: str | os.PathLike[str], *, what: str = "JSONL file"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped. Raises :class:`BadInputError`."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{what} {p} does not exist")
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInputError(f"{p}:{n}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise BadInputError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def _text_field(obj: dict[str, Any], key: str, path: Path, line: int) -> str:
    if key not in obj:
        raise BadInputError(f"{path}:{line}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, str):
        raise BadInputError(f"{path}:{line}: field {key!r} must be a string, got {type(val).__name__}")
    return val


def claim_id(rid: str, seen: dict[str, int], path: Path, line: int) -> str:
    """``rid``, recorded in ``seen`` (id -> line); a second record with that id is bad input."""
    if rid in seen:
        raise BadInputError(f"{path}:{line}: duplicate id {rid!r} (first on line {seen[rid]})")
    seen[rid] = line
    return rid


def probability_field(obj: dict[str, Any], key: str, path: Path, line: int) -> float:
    """``obj[key]`` as a probability: a number (not a bool) in [0, 1]."""
    val = obj.get(key)
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0.0 <= float(val) <= 1.0:
        raise BadInputError(f"{path}:{line}: field {key!r} must be a number in [0, 1], got {val!r}")
    return float(val)


def pair_id(prompt: str, index: int) -> str:
    """A stable id for the pair sampled from the ``index``-th prompt."""
    return f"p{index:07d}-{hashlib.sha1(prompt.encode()).hexdigest()[:10]}"


def read_prompts(
    path: str | os.PathLike[str], *, field: str = "prompt", limit: int | None = None
) -> list[dict[str, Any]]:
    """``[{"id", "prompt", "source"}]`` from a prompts JSONL (``field`` holds the text)."""
    p = Path(path)
    out: list[dict[str, Any]] = []
    for line, obj in read_jsonl(p, what="prompts file"):
        text = _text_field(obj, field, p, line)
        if not text.strip():
            raise BadInputError(f"{p}:{line}: field {field!r} is empty")
        idx = len(out)
        out.append({"id": str(obj.get("id") or pair_id(text, idx)), "prompt": text, "source": f"{p}:{line}"})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise BadInputError(f"prompts file {p} holds no prompts")
    return out


def read_pairs(
    path: str | os.PathLike[str], *, require_label: bool = False, what: str = "pairs file"
) -> list[dict[str, Any]]:
    """Pairs ``{"id", "prompt", "response_a", "response_b"[, "p_a"]}`` with their ``source`` (file:line).

    ``id`` defaults to a hash of the line; ids must be unique. With ``require_label``, ``p_a`` (a
    number in [0, 1]) is required.
    """
    p = Path(path)
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(p, what=what):
        rec: dict[str, Any] = {
            "prompt": _text_field(obj, "prompt", p, line),
            "response_a": _text_field(obj, "response_a", p, line),
            "response_b": _text_field(obj, "response_b", p, line),
        }
        rid = obj.get("id")
        if rid is None:
            rid = "h" + hashlib.sha1(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
        rec["id"] = claim_id(str(rid), seen, p, line)
        rec["source"] = f"{p}:{line}"
        if require_label or "p_a" in obj:
            rec["p_a"] = probability_field(obj, "p_a", p, line)
        out.append(rec)
    if not out:
        raise BadInputError(f"{what} {p} holds no pairs")
    return out


class JsonlAppender:
    """Append-only JSONL keyed by ``id``: re-opening skips what is there and drops a torn last line."""

    def __init__(self, path: str | os.PathLike[str], *, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good_bytes = 0
        if self.path.exists():
            with open(self.path, "rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # torn write from a crash: drop it
                    try:
                        obj = json.loads(raw)
                    except json.JSONDecodeError:
                        break
                    self.records[str(obj[key])] = obj
                    good_bytes += len(raw)
            if good_bytes != self.path.stat().st_size:
                with open(self.path, "r+b") as fh:
                    fh.truncate(good_bytes)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def __contains__(self, rid: str) -> bool:
        return rid in self.records

    def __len__(self) -> int:
        return len(self.records)

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        lines = []
        for r in records:
            self.records[str(r[self.key])] = r
            lines.append(json.dumps(r, ensure_ascii=False) + "\n")
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
