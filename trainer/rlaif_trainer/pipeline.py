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
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.stages import run_stage

log = logging.getLogger(__name__)

__all__ = ["format_summary_table", "run_pipeline"]


def _first(summary: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if summary.get(k) is not None:
            return summary[k]
    return None


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _headline(stage: str, s: dict[str, Any]) -> str:
    if stage == "label":
        n = _first(s, "pairs", "labels", "labeled", "n_pairs")
        cons = _first(s, "consistency_rate", "position_consistency", "labeler_position_consistency")
        conf = _first(s, "mean_confidence")
        return f"labels {_fmt(n)}, position consistency {_fmt(cons)}, mean confidence {_fmt(conf)}"
    if stage == "reward":
        acc = _first(s, "accuracy", "eval_accuracy", "reward_model_accuracy", "heldout_accuracy")
        loss = _first(s, "eval_loss", "loss", "train_loss")
        return f"held-out accuracy {_fmt(acc)}, loss {_fmt(loss)}"
    if stage == "rl":
        return (
            f"reward {_fmt(s.get('initial_reward'))} -> {_fmt(s.get('final_reward'))}, "
            f"KL({s.get('kl_estimator', '?')}) {_fmt(s.get('final_kl'))}, "
            f"{_fmt(s.get('tokens_per_s'), 1)} tok/s"
        )
    if stage == "evaluate":
        wr, lo, hi = s.get("win_rate_vs_initial"), s.get("win_rate_ci_low"), s.get("win_rate_ci_high")
        return (
            f"win rate vs initial {_fmt(wr)} [95% CI {_fmt(lo)}, {_fmt(hi)}], "
            f"at equal length {_fmt(s.get('win_rate_equal_length'))}, n={_fmt(s.get('prompts'))}"
        )
    return ""


def format_summary_table(job: str, rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: stage, status, wall time, headline metrics."""
    header = ("stage", "status", "wall", "result")
    body = [
        (
            r["stage"],
            r["status"],
            f"{r['wall_s']:.1f}s" if r.get("wall_s") is not None else "-",
            r["headline"],
        )
        for r in rows
    ]
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
            rows.append(
                {"stage": stage, "status": "failed", "wall_s": wall, "headline": outcome.message["error"]}
            )
            break
        summary = outcome.summary
        assert summary is not None  # set on success
        summaries[stage] = summary
        rows.append(
            {
                "stage": stage,
                "status": "skipped (done)" if already else "ran",
                "wall_s": None if already else wall,
                "headline": _headline(stage, summary),
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
