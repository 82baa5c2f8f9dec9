"""The ``label`` stage: candidate pairs (given, or sampled from the policy), then AI preference labels.

Inputs (from the resolved :class:`rlaif_api.StageConfig`):

* ``dataset.pairs`` (given pairs, see :func:`rlaif_trainer.data.records.read_pairs`), or else
  ``dataset.prompts``: the training prompts (the held-out split is excluded exactly as in
  :func:`rlaif_trainer.data.prompts.split_prompts`), from which :mod:`rlaif_trainer.feedback.candidates`
  samples two responses each with ``rl.temperature``, ``rl.top_p`` and ``rl.max_new_tokens``;
* ``labeler``: the labeler (:func:`rlaif_trainer.feedback.build.build_labeler`). An ``hf`` labeler that
  names the policy's checkpoint reuses the policy model already in memory.

Output: ``<artifacts.labels>/labels.jsonl``, one labelled pair per line, append-only and keyed by
``id`` (a restarted stage skips pairs already labelled)::

    {"id": "p0000003-1a2b3c4d5e", "prompt": "...", "response_a": "...", "response_b": "...",
     "p_a": 0.62,            # soft label: probability that response_a is preferred (debiased)
     "p_a_ab": 0.71,         # P(a preferred) with a shown first
     "p_a_ba": 0.53,         # P(a preferred) with a shown second (absent without positionDebias)
     "consistent": true,     # both orders picked the same response (pointwise: always true)
     "mode": "pairwise", "labeler": "<provider>:<model or callable>",
     "source": "/data/prompts.jsonl:4",
     "rationale_ab": "...", "rationale_ba": "...",        # chain-of-thought only
     "details": {"logodds_a": [...], "logodds_b": [...]}}  # pointwise: per-principle log-odds

With ``dataset.calibrationPairs``, the labeler also labels those human-labelled pairs first
(:mod:`rlaif_trainer.feedback.calibration`): ``calibration.jsonl`` (one record per pair) and
``calibration_report.json`` in the same directory, and the alignment, position-bias rate and mean
confidence in the summary.

The ``reward`` stage reads ``id``, ``prompt``, ``response_a``, ``response_b`` and ``p_a``; a
``dataset.labels`` file given by the user needs only those. ``DONE`` holds the stage summary.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rlaif_api.summaries import LabelSummary
from rlaif_trainer.data.artifacts import (
    CANDIDATES_FILE,
    LABELS_FILE,
    finalize_dir,
    is_done,
    partial_dir,
)
from rlaif_trainer.data.prompts import train_prompt_records
from rlaif_trainer.data.records import (
    read_pairs,
)
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.build import build_labeler
from rlaif_trainer.feedback.calibration import (
    CALIBRATION_FILE,
    calibrate,
    calibration_summary,
    format_calibration,
    read_calibration_pairs,
)
from rlaif_trainer.feedback.labeling import label_pairs, summarize
from rlaif_trainer.feedback.sharding import select
from rlaif_trainer.stages.common import resumed_summary, shares_policy_weights

log = logging.getLogger(__name__)

__all__ = ["run"]


def labeler_name(spec: Any) -> str:
    ref = spec.callable if spec.provider == "python" else spec.model
    return f"{spec.provider}:{ref}"


def run(config: Any, *, progress: bool = True, shard: tuple[int, int] | None = None) -> LabelSummary:
    """Run the label stage; returns the summary (also stored in ``<labels>/DONE``). ``shard``
    (index, count) labels only that shard of the pairs (see :mod:`rlaif_trainer.stages.label_shards`)."""
    spec = config.spec
    art = config.artifacts
    if (done := resumed_summary(art.labels, LabelSummary)) is not None:
        return done
    if spec.labeler is None:
        raise BadInputError("the label stage needs spec.labeler")
    lspec = spec.labeler
    if shard is None and spec.resources.shards("label") > 1:
        from rlaif_trainer.stages.label_shards import run_sharded

        return run_sharded(config, run, progress=progress)

    policy_model = policy_tok = None
    if spec.dataset.pairs:
        pairs = read_pairs(spec.dataset.pairs)
        cand_summary: dict[str, Any] = {"source": "dataset.pairs"}
    elif is_done(art.candidates):
        pairs = read_pairs(Path(art.candidates) / CANDIDATES_FILE, what="candidates file")
        cand_summary = {"source": "candidates"}
    else:
        from rlaif_trainer.feedback.candidates import generate_candidates
        from rlaif_trainer.modeling.loading import load_causal_lm

        prompts = train_prompt_records(spec)
        prompts = select(prompts, *shard) if shard is not None else prompts  # a pair has its prompt's id
        policy_model, policy_tok = load_causal_lm(spec.policy.model)
        work = partial_dir(art.candidates)
        t0 = time.perf_counter()
        pairs = generate_candidates(
            policy_model,
            policy_tok,
            prompts,
            work / CANDIDATES_FILE,
            temperature=spec.rl.temperature,
            top_p=spec.rl.top_p,
            max_new_tokens=spec.rl.max_new_tokens,
            batch_size=lspec.batch_size,
            seed=config.seed,
            max_prompt_length=spec.policy.max_prompt_length,
            progress=progress,
        )
        cand_summary = {
            "source": "sampled",
            "prompts": len(prompts),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        finalize_dir(work, art.candidates, cand_summary)
    if shard is not None:
        pairs = select(pairs, *shard)

    reuse = policy_model is not None and shares_policy_weights(lspec, spec)
    labeler = build_labeler(
        lspec, model=policy_model if reuse else None, tokenizer=policy_tok if reuse else None
    )
    if not reuse:
        policy_model = policy_tok = None  # free the policy if the labeler is another model

    work = partial_dir(art.labels)
    records, timing = label_pairs(
        labeler,
        pairs,
        work / LABELS_FILE,
        chunk_size=max(lspec.batch_size * 4, 16),
        progress=progress,
        extra={"labeler": labeler_name(lspec)},
    )
    calibration: dict[str, Any] = {}
    if spec.dataset.calibration_pairs and (shard is None or shard[0] == 0):  # once, by shard 0
        cal_report, cal_records = calibrate(labeler, read_calibration_pairs(spec.dataset.calibration_pairs))
        with (work / CALIBRATION_FILE).open("w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in cal_records)
        (work / "calibration_report.json").write_text(json.dumps(cal_report, indent=2))
        calibration = calibration_summary(cal_report)
        log.info("label: calibration against human preferences\n%s", format_calibration(cal_report))
    summary = LabelSummary(
        **summarize(records),
        **calibration,
        mode=lspec.mode,
        provider=lspec.provider,
        labelled_now=int(timing["labelled_now"]),
        pairs_per_s=round(timing["labelled_now"] / timing["seconds"], 3)
        if timing["seconds"] > 0 and timing["labelled_now"]
        else None,
        candidates=cand_summary.get("source"),
        shard=shard[0] if shard is not None else None,
        shards=shard[1] if shard is not None else None,
    )
    if lspec.mode == "pointwise":
        # Each response is judged alone: both orders agree by construction, so a consistency of 1.0
        # would say nothing about the labeler. Its quality figure is the calibration alignment.
        summary.consistency_rate = None
    finalize_dir(work, art.labels, summary)
    return summary
