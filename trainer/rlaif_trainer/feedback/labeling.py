"""Labelling pairs with a labeler into an append-only JSONL keyed by pair id (resumable)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.data.records import (
    JsonlAppender,
)
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.base import InputTooLongError, Labeler, PreferenceResult

log = logging.getLogger(__name__)


def _label_chunk(labeler: Labeler, chunk: list[dict[str, Any]]) -> list[PreferenceResult]:
    try:
        return labeler.preference(
            [p["prompt"] for p in chunk], [p["response_a"] for p in chunk], [p["response_b"] for p in chunk]
        )
    except InputTooLongError as err:
        # Find the offending pair to name its file and line.
        for p in chunk:
            try:
                labeler.preference([p["prompt"]], [p["response_a"]], [p["response_b"]])
            except InputTooLongError as one:
                raise BadInputError(
                    f"{p.get('source') or p['id']}: the labeler prompt for pair {p['id']!r} is {one.n_tokens} tokens, "
                    f"longer than the labeler's context of {one.limit}"
                ) from None
        raise BadInputError(f"a labeler prompt exceeds the labeler's context: {err}") from None


def label_pairs(
    labeler: Labeler,
    pairs: list[dict[str, Any]],
    out_path: str | Path,
    *,
    chunk_size: int = 32,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Label ``pairs`` into the append-only ``out_path``, skipping ids already there.

    Returns all records (in ``pairs`` order) and timing ``{"labelled_now", "seconds"}``.
    """
    from tqdm.auto import tqdm

    extra = extra or {}
    with JsonlAppender(out_path) as out:
        todo = [p for p in pairs if p["id"] not in out]
        done = len(pairs) - len(todo)
        bar = tqdm(total=len(pairs), initial=done, desc="label", unit="pair", disable=not progress)
        t0 = time.perf_counter()
        prom.record_progress(done / max(len(pairs), 1), pairs_labelled=done)
        try:
            for s in range(0, len(todo), chunk_size):
                t_chunk = time.perf_counter()
                chunk = todo[s : s + chunk_size]
                results = _label_chunk(labeler, chunk)
                recs = []
                for p, r in zip(chunk, results, strict=True):
                    rec = {k: p[k] for k in ("id", "prompt", "response_a", "response_b")}
                    rec.update(r.to_json())
                    rec["mode"] = getattr(labeler, "mode", "pairwise")
                    rec.update(extra)
                    if p.get("source"):
                        rec["source"] = p["source"]
                    recs.append(rec)
                out.write_many(recs)
                bar.update(len(chunk))
                done += len(chunk)
                prom.record_step(samples=len(chunk), seconds=time.perf_counter() - t_chunk)
                prom.record_progress(done / len(pairs), pairs_labelled=done)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        records = [out.records[p["id"]] for p in pairs]
    return records, {"labelled_now": float(len(todo)), "seconds": seconds}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairs, consistency rate, mean confidence and the share of pairs that prefer A."""
    n = len(records)
    cons = [r["consistent"] for r in records if r.get("consistent") is not None]
    return {
        "pairs": n,
        "consistency_rate": round(sum(cons) / len(cons), 4) if cons else None,
        "mean_confidence": round(sum(abs(r["p_a"] - 0.5) * 2 for r in records) / n, 4) if n else None,
        "mean_p_a": round(sum(r["p_a"] for r in records) / n, 4) if n else None,
    }
