"""The label stage split over ``resources.label.shards`` pods of an Indexed Job, and the merge.

Each pod runs the ordinary label stage (:func:`rlaif_trainer.stages.label.run`) on its shard of the
pairs (:mod:`rlaif_trainer.feedback.sharding`), into its own artifact directory
``<labels>.shards/<index>/`` (and, when it samples the candidate pairs, ``<candidates>.shards/<index>/``),
finalized with its own ``DONE``. A retried attempt resumes every shard: a finished shard reports its
saved summary, an unfinished one skips the pairs already in its JSONL.

**Where the merge runs: in the last shard to finish.** After its own shard, each pod takes the merge
lock and looks at the other shards' ``DONE`` markers; the one that finds them all merges the shards into
``<labels>/labels.jsonl`` and writes the stage's ``DONE`` with the summary of every pair. Each pod
writes its ``DONE`` before it takes the lock, so the last one to take it sees every shard: the merge
runs exactly once per attempt, with no extra pod, no pod left waiting on the others (a waiting pod
would hold its GPU, and with less quota than shards it could wait for a pod that never starts), and no
new step in the operator's plan. A pod killed between its ``DONE`` and the merge fails the attempt; the
retry finds every shard done and merges at once. The pod that merged reports the whole stage as its
termination message; the others report their shard (``"shard"`` set), which the operator skips.

Locally (``rlaif-train pipeline``, no ``$JOB_COMPLETION_INDEX``) one process labels the shards one
after another and merges them, so a sharded job gives the same labels file as a cluster run.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif_api.summaries import LabelSummary
from rlaif_trainer.data.artifacts import (
    CANDIDATES_FILE,
    LABELS_FILE,
    finalize_dir,
    is_done,
    partial_dir,
    read_done,
)
from rlaif_trainer.data.prompts import train_prompt_records
from rlaif_trainer.data.records import read_pairs
from rlaif_trainer.feedback.calibration import CALIBRATION_FILE
from rlaif_trainer.feedback.labeling import summarize
from rlaif_trainer.feedback.sharding import (
    completion_index,
    merge_lock,
    merge_records,
    read_shard,
    shard_dir,
    shards_root,
)

log = logging.getLogger(__name__)

__all__ = ["merge_if_complete", "run_sharded", "shard_config", "source_ids"]

CALIBRATION_REPORT = "calibration_report.json"
LabelRun = Callable[..., LabelSummary]


def shard_config(config: Any, index: int) -> Any:
    """The stage config of shard ``index``: its own labels directory, and its own candidates
    directory unless the candidate pairs already exist (then every shard reads them)."""
    art = config.artifacts
    update = {"labels": str(shard_dir(art.labels, index))}
    if not config.spec.dataset.pairs and not is_done(art.candidates):
        update["candidates"] = str(shard_dir(art.candidates, index))
    return config.model_copy(update={"artifacts": art.model_copy(update=update)})


def source_ids(config: Any) -> list[str]:
    """The ids of every pair the stage labels, in input order: the merge must return each once."""
    spec, art = config.spec, config.artifacts
    if spec.dataset.pairs:
        return [str(p["id"]) for p in read_pairs(spec.dataset.pairs)]
    if is_done(art.candidates):
        return [
            str(p["id"]) for p in read_pairs(Path(art.candidates) / CANDIDATES_FILE, what="candidates file")
        ]
    return [str(r["id"]) for r in train_prompt_records(spec)]  # a sampled pair has its prompt's id


def run_sharded(config: Any, label_run: LabelRun, *, progress: bool = True) -> LabelSummary:
    """Label this pod's shard (every shard, without ``$JOB_COMPLETION_INDEX``), then merge if it was
    the last; returns the stage summary (merged) or this shard's summary (``"shard"`` set)."""
    shards = config.spec.resources.shards("label")
    index = completion_index(shards)
    own = LabelSummary(pairs=0)
    for i in [index] if index is not None else range(shards):
        own = label_run(shard_config(config, i), progress=progress, shard=(i, shards))
    return merge_if_complete(config, shards, own)


def merge_if_complete(config: Any, shards: int, own: LabelSummary) -> LabelSummary:
    """Merge the shards if they are all done and nobody has; otherwise report ``own`` (this shard)."""
    art = config.artifacts
    with merge_lock(shards_root(art.labels)):
        if is_done(art.labels):  # another shard merged already
            return LabelSummary.model_validate({**read_done(art.labels), "resumed": True})
        waiting = [i for i in range(shards) if not is_done(shard_dir(art.labels, i))]
        if waiting:
            log.info(
                "label: shard %s done; shards %s still labelling, the last one merges", own.shard, waiting
            )
            return own.model_copy(update={"shards": shards})
        return _merge(config, shards)


def _merge(config: Any, shards: int) -> LabelSummary:
    spec, art = config.spec, config.artifacts
    expected = source_ids(config)
    summaries = [read_done(shard_dir(art.labels, i)) for i in range(shards)]
    records = merge_records(
        [read_shard(shard_dir(art.labels, i) / LABELS_FILE) for i in range(shards)], expected, shards
    )
    sampled = [shard_dir(art.candidates, i) for i in range(shards)]
    if not spec.dataset.pairs and not is_done(art.candidates) and all(is_done(d) for d in sampled):
        # The shards sampled their own candidate pairs: join them too, so that the candidates
        # artifact is whole (and a later run of the stage reads it rather than sampling again).
        candidates = merge_records([read_shard(d / CANDIDATES_FILE) for d in sampled], expected, shards)
        work_c = partial_dir(art.candidates)
        work_c.mkdir(parents=True, exist_ok=True)
        _write_jsonl(work_c / CANDIDATES_FILE, candidates)
        finalize_dir(
            work_c, art.candidates, {"source": "sampled", "prompts": len(candidates), "shards": shards}
        )

    work = partial_dir(art.labels)
    if work.exists():
        shutil.rmtree(work)  # a merge cut short: its input, the shards, is all there
    work.mkdir(parents=True)
    _write_jsonl(work / LABELS_FILE, records)
    first = shard_dir(art.labels, 0)  # shard 0 also labels dataset.calibrationPairs
    for name in (CALIBRATION_FILE, CALIBRATION_REPORT):
        if (first / name).exists():
            shutil.copy2(first / name, work / name)
    labelled_now = sum(int(s.get("labelled_now") or 0) for s in summaries)
    rates = [s.get("pairs_per_s") for s in summaries]
    summary = LabelSummary(
        **summarize(records),
        **{k: v for k, v in summaries[0].items() if k.startswith("calibration_")},
        mode=summaries[0].get("mode"),
        provider=summaries[0].get("provider"),
        labelled_now=labelled_now,
        # the shards ran side by side, so the stage's rate is the sum of theirs
        pairs_per_s=round(sum(r for r in rates if isinstance(r, (int, float))), 3)
        if any(isinstance(r, (int, float)) for r in rates)
        else None,
        candidates=summaries[0].get("candidates"),
        shards=shards,
    )
    if summaries[0].get("mode") == "pointwise":
        summary.consistency_rate = None
    finalize_dir(work, art.labels, summary)
    log.info("label: merged %d shards, %d pairs", shards, len(records))
    return summary


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
