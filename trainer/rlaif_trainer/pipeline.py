"""``rlaif-train pipeline <rlaifjob.yaml>``: run a whole RLAIFJob locally, without Kubernetes.

The manifest is validated with the same rules as the API server (:func:`rlaif_api.load_job`)
and resolved with the same code the operator uses (:func:`rlaif_api.resolve_stage_configs`),
relative paths anchored at the YAML file's directory. The listed stages then run in order in this
process, each with the config its pod would get, writing under
``<workspace>/<namespace>/<job>/{candidates,labels,reward_model,policy,eval}/``.

A stage whose artifact directory already holds a ``DONE`` marker is not run again (its saved
summary is reused), and an interrupted stage resumes from its own checkpoints, so re-running the
command after an interruption continues where it stopped. The run ends with a summary table and
writes ``pipeline_summary.json`` next to the artifacts.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif_api.contract import EXIT_OK, STAGE_ORDER, STAGES
from rlaif_api.summaries import EvaluateSummary, LabelSummary, RewardSummary, RLSummary, StageSummary
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.stages import run_stage

log = logging.getLogger(__name__)

__all__ = ["format_summary_table", "run_pipeline"]


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ci(lo: float | None, hi: float | None, nd: int = 3) -> str:
    return f"[95% CI {_fmt(lo, nd)}, {_fmt(hi, nd)}]" if lo is not None and hi is not None else ""


def _signed(x: Any, nd: int = 3) -> str:
    return f"{x:+.{nd}f}" if isinstance(x, (int, float)) else "-"


def _verdict(low: Any, p: Any = None) -> str:
    if not isinstance(low, (int, float)):
        return ""
    if low > 0 and (p is None or p < 0.05):
        return "IMPROVED"
    return "no significant gain"


def _failure_headline(message: dict[str, Any]) -> str:
    """A failed stage's message (:class:`rlaif_trainer.stages.StageOutcome`) in one line."""
    return f"FAILED ({message.get('reason') or 'error'}): {message.get('error')}"


def _headline(s: StageSummary) -> str | list[str]:
    """The stage's result in one line, or several (the evaluate stage's three kinds of evidence)."""
    if isinstance(s, LabelSummary):
        cons = s.consistency_rate
        text = f"labels {_fmt(s.pairs)}, mean confidence {_fmt(s.mean_confidence)}, " + (
            f"position consistency {_fmt(cons)}" if cons is not None else "no position bias (pointwise)"
        )
        if s.calibration_alignment is not None:
            text += (
                f"; human calibration: alignment {_fmt(s.calibration_alignment)} "
                f"(95% CI from {_fmt(s.calibration_alignment_ci_low)}) on {s.calibration_pairs} pairs"
            )
        return text
    if isinstance(s, RewardSummary):
        gate = "passed" if s.gate_passed else "FAILED" if s.gate_passed is False else "-"
        return (
            f"held-out accuracy {_fmt(s.accuracy)} {_ci(s.accuracy_ci_low, s.accuracy_ci_high)} on "
            f"{_fmt(s.eval_pairs)} pairs, gate (lower end > {_fmt(s.min_held_out_accuracy, 2)}) {gate}, "
            f"loss {_fmt(s.eval_loss)}"
        )
    if isinstance(s, RLSummary):
        m = s.headline_steps
        span = f" (mean of first/last {m} steps)" if m else ""
        return (
            f"reward ({s.reward_source or '?'}) {_fmt(s.initial_reward)} -> {_fmt(s.final_reward)}{span}, "
            f"KL({s.kl_estimator or '?'}) {_fmt(s.final_kl)}, "
            f"{_fmt(s.tokens_per_s, 1)} tok/s"
        )
    if isinstance(s, EvaluateSummary):
        lines = [
            f"{_fmt(s.prompts)} held-out prompts x {_fmt(s.samples_per_prompt)} samples per policy, paired by prompt"
        ]
        if s.reward_gain is not None:
            lines.append(
                f"(a) optimised reward {_fmt(s.reward_initial)} -> {_fmt(s.reward_trained)}: "
                f"{_signed(s.reward_gain)} {_ci(s.reward_gain_ci_low, s.reward_gain_ci_high)}, "
                f"p={_fmt(s.reward_gain_p_value, 4)} {_verdict(s.reward_gain_ci_low)}"
            )
        else:
            lines.append("(a) optimised reward: not available")
        lines.append(
            f"(b) AI-judge win rate vs initial {_fmt(s.win_rate_vs_initial)} "
            f"{_ci(s.win_rate_ci_low, s.win_rate_ci_high)}, at equal length {_fmt(s.win_rate_equal_length)}; "
            f"A/A null {_fmt(s.aa_win_rate)} {_ci(s.aa_win_rate_ci_low, s.aa_win_rate_ci_high)}"
            + (
                "; the judge IS the reward source: not independent evidence"
                if s.judge_is_reward_source
                else ""
            )
        )
        if s.rouge_l_gain is not None:
            lines.append(
                f"(c) ROUGE-L vs references (never optimised) {_fmt(s.rouge_l_initial)} -> "
                f"{_fmt(s.rouge_l_trained)}: {_signed(s.rouge_l_gain)} "
                f"{_ci(s.rouge_l_gain_ci_low, s.rouge_l_gain_ci_high)}, p={_fmt(s.rouge_l_gain_p_value, 4)} "
                f"{_verdict(s.rouge_l_gain_ci_low, s.rouge_l_gain_p_value)}"
            )
        else:
            lines.append("(c) never-optimised signal: none (set dataset.evalReferences)")
        return lines
    return ""


def format_summary_table(job: str, rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: stage, status, wall time, headline metrics."""
    header = ("stage", "status", "wall", "result")
    body = []
    for r in rows:
        lines = r["headline"] if isinstance(r["headline"], list) else [r["headline"]]
        wall = f"{r['wall_s']:.1f}s" if r.get("wall_s") is not None else "-"
        body.append((r["stage"], r["status"], wall, lines[0] if lines else ""))
        body.extend(("", "", "", line) for line in lines[1:])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    line = "-+-".join("-" * w for w in widths)
    out = [f"RLAIFJob {job}", line]
    out.append(" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append(line)
    for row in body:
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    out.append(line)
    return "\n".join(out)


def run_pipeline(
    job_yaml_path: str | Path,
    workspace: str | Path,
    *,
    stages: Sequence[str] | None = None,
    progress: bool = True,
    print_table: bool = True,
) -> dict[str, Any]:
    """Run the job's stages (or the subset ``stages``) in order; return the pipeline summary."""
    from pydantic import ValidationError

    from rlaif_api import load_job, resolve_stage_configs

    path = Path(job_yaml_path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such RLAIFJob manifest")
    try:
        job = load_job(path)
    except (ValidationError, ValueError) as err:
        raise BadInputError(f"{path}: invalid RLAIFJob\n{err}") from err
    configs = resolve_stage_configs(job, Path(workspace).resolve(), base_dir=path.resolve().parent)
    selected = [s for s in STAGE_ORDER if s in configs]
    if stages:
        unknown = [s for s in stages if s not in configs]
        if unknown:
            raise BadInputError(f"{path}: stages {unknown} are not in the job's stages {list(configs)}")
        selected = [s for s in selected if s in stages]

    any_config = next(iter(configs.values()))
    job_dir = Path(any_config.workspace)
    job_dir.mkdir(parents=True, exist_ok=True)
    for stage, cfg in configs.items():
        (job_dir / "configs").mkdir(exist_ok=True)
        (job_dir / "configs" / f"{stage}.json").write_text(cfg.to_json())

    exit_code = EXIT_OK
    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for stage in selected:
        cfg = configs[stage]
        artifact = Path(getattr(cfg.artifacts, STAGES[stage].artifact))
        already = (artifact / "DONE").exists()
        log.info("pipeline: stage %s%s", stage, " (already done, skipping)" if already else "")
        if progress and not already:
            print(f"==> {stage}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        outcome = run_stage(stage, cfg, progress=progress)
        wall = time.perf_counter() - t0
        if not outcome.ok:  # as in a pod: the exit code says whether a rerun could succeed
            exit_code = outcome.exit_code
            summaries[stage] = outcome.message  # the error, and a reason and figures when it has them
            rows.append(
                {
                    "stage": stage,
                    "status": "failed",
                    "wall_s": wall,
                    "headline": _failure_headline(outcome.message),
                }
            )
            break
        summary = outcome.summary
        assert summary is not None  # set on success
        summaries[stage] = summary.to_message()
        rows.append(
            {
                "stage": stage,
                "status": "skipped (done)" if already else "ran",
                "wall_s": None if already else wall,
                "headline": _headline(summary),
            }
        )
        gc.collect()

    result = {
        "job": job.metadata.name,
        "exit_code": exit_code,
        "namespace": job.metadata.namespace,
        "workspace": str(job_dir),
        "stages": rows,
        "summaries": summaries,
        "wall_s": round(time.perf_counter() - t_all, 3),
    }
    (job_dir / "pipeline_summary.json").write_text(json.dumps(result, indent=2, default=str))
    table = format_summary_table(job.metadata.name, rows)
    result["table"] = table
    if print_table:
        print(table, flush=True)
    return result
