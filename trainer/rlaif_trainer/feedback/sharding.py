"""Sharded labeling (``resources.label.shards``): which pod labels which pairs, and the merge.

* **Assignment** is by pair id alone (:func:`shard_of`: a SHA-256 of the id, modulo the shard count),
  so it does not depend on the order of the input, on the process, or on what a previous attempt
  finished: a retried shard finds its own pairs in its own output and skips them.
* **Merge** (:func:`merge_records`) joins the shards' records into the input's order and refuses
  any pair that is missing or that two shards both labelled, so a lost or doubled pair can never
  reach the reward stage unnoticed.
* **The pod's shard** is the Indexed Job's completion index (``$JOB_COMPLETION_INDEX``, set by the
  Job controller); without it (a local ``rlaif-train pipeline`` run) one process labels every shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer.errors import BadInputError

__all__ = [
    "ENV_COMPLETION_INDEX",
    "ShardMergeError",
    "completion_index",
    "merge_lock",
    "merge_records",
    "read_shard",
    "select",
    "shard_dir",
    "shard_of",
    "shards_root",
]

#: Set by the Job controller in every pod of an Indexed Job: the pod's index, 0 to completions - 1.
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


class ShardMergeError(RuntimeError):
    """The shards do not add up to the input: a pair is missing, or labelled by two shards."""


def shard_of(pair_id: str, shards: int) -> int:
    """The shard (0 to ``shards`` - 1) that labels the pair ``pair_id``; the same in every process
    (Python's ``hash`` of a string is salted per process, so it cannot be used)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    digest = hashlib.sha256(pair_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def select(records: Iterable[dict[str, Any]], index: int, shards: int) -> list[dict[str, Any]]:
    """The records (pairs or prompts, keyed by ``id``) of shard ``index``, in their input order."""
    return [r for r in records if shard_of(str(r["id"]), shards) == index]


def completion_index(shards: int, environ: dict[str, str] | None = None) -> int | None:
    """This pod's shard from ``$JOB_COMPLETION_INDEX``, or ``None`` when the variable is unset."""
    raw = (os.environ if environ is None else environ).get(ENV_COMPLETION_INDEX)
    if raw is None or raw == "":
        return None
    try:
        index = int(raw)
    except ValueError:
        raise BadInputError(f"${ENV_COMPLETION_INDEX} is {raw!r}, not a shard index") from None
    if not 0 <= index < shards:
        raise BadInputError(
            f"${ENV_COMPLETION_INDEX} is {index}, outside the {shards} shards of resources.label.shards"
        )
    return index


def shards_root(final: str | os.PathLike[str]) -> Path:
    """``<artifact>.shards/``: beside the artifact, so the artifact directory stays the merged output."""
    f = Path(final)
    return f.with_name(f.name + ".shards")


def shard_dir(final: str | os.PathLike[str], index: int) -> Path:
    """The artifact directory of shard ``index`` (finalized with its own ``DONE``)."""
    return shards_root(final) / f"{index:03d}"


def read_shard(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """One shard's JSONL records by id. A later line of the same id wins, as in the appender that
    wrote it (a pod of a failed attempt that was still stopping may have written a pair twice)."""
    out: dict[str, dict[str, Any]] = {}
    p = Path(path)
    if not p.exists():
        return out
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[str(rec["id"])] = rec
    return out


def merge_records(
    shards: Sequence[dict[str, dict[str, Any]]], expected_ids: Sequence[str], n_shards: int | None = None
) -> list[dict[str, Any]]:
    """Join the shards' records (one ``{id: record}`` per shard, in shard order) into the order of
    ``expected_ids``. Raises :class:`ShardMergeError` if a pair is missing, if two shards hold the
    same pair, if a shard holds a pair that is not in the input, or (with ``n_shards``) if a shard
    holds a pair assigned to another shard."""
    merged: dict[str, dict[str, Any]] = {}
    for index, records in enumerate(shards):
        for rid, rec in records.items():
            if rid in merged:
                raise ShardMergeError(f"pair {rid!r} was labelled by two shards (one of them shard {index})")
            if n_shards is not None and shard_of(rid, n_shards) != index:
                raise ShardMergeError(
                    f"pair {rid!r} is in shard {index}, but belongs to shard {shard_of(rid, n_shards)}"
                )
            merged[rid] = rec
    expected = list(expected_ids)
    if len(set(expected)) != len(expected):
        raise ShardMergeError("the input lists a pair id twice")
    missing = [rid for rid in expected if rid not in merged]
    extra = sorted(set(merged) - set(expected))
    if missing or extra:
        raise ShardMergeError(
            f"the shards do not match the input: {len(missing)} pairs missing (e.g. {missing[:3]}), "
            f"{len(extra)} not in the input (e.g. {extra[:3]})"
        )
    return [merged[rid] for rid in expected]


@contextlib.contextmanager
def merge_lock(root: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock on ``<root>/merge.lock`` while one shard checks for and runs the merge. The
    kernel releases it when the holder dies, so a killed pod leaves no stale lock."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / "merge.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
