"""``rlaif-operator`` / ``python -m rlaif_operator``: run the operator.

One replica at a time (Deployment strategy ``Recreate``): the operator runs kopf in standalone
mode, without peering.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from rlaif_api import argtypes

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from .settings import DEFAULT_TRAINER_METRICS_PORT

    parser = argparse.ArgumentParser(
        prog="rlaif-operator",
        description=(
            "Reconcile RLAIFJob resources (rlaif.dev/v1alpha1) into one batch/v1 Job per stage "
            "(label -> reward -> rl -> evaluate), with status, events and Prometheus metrics."
        ),
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="watch this namespace (repeatable; kopf glob patterns such as 'team-*' allowed)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch RLAIFJobs in every namespace"
    )
    parser.add_argument(
        "--metrics-port",
        type=argtypes.port,
        default=8080,
        help="port of the Prometheus /metrics endpoint (default 8080; 0 disables)",
    )
    parser.add_argument(
        "--liveness-port",
        type=argtypes.port,
        default=8081,
        help="port of the /healthz liveness endpoint (default 8081; 0 disables)",
    )
    parser.add_argument(
        "--log-format", choices=["plain", "json"], default="plain", help="log line format (default plain)"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("RLAIF_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default $RLAIF_LOG_LEVEL or INFO)",
    )
    parser.add_argument(
        "--trainer-image",
        default=os.environ.get("RLAIF_TRAINER_IMAGE"),
        help="trainer image for stage pods when spec.image is not set (default $RLAIF_TRAINER_IMAGE)",
    )
    parser.add_argument(
        "--gpu-resource-name",
        default="nvidia.com/gpu",
        help="extended resource that stage pods request for GPUs (default nvidia.com/gpu)",
    )
    parser.add_argument(
        "--trainer-service-account",
        default=None,
        help="ServiceAccount of stage pods when spec.podTemplate.serviceAccountName is not set",
    )
    parser.add_argument(
        "--default-queue-name",
        default=None,
        help="Kueue LocalQueue for jobs without spec.runPolicy.queueName (stage Jobs are then created suspended)",
    )
    parser.add_argument(
        "--trainer-metrics-port",
        type=argtypes.port,
        default=DEFAULT_TRAINER_METRICS_PORT,
        metavar="PORT",
        help=f"container port (named `metrics`) where stage pods serve Prometheus metrics (default {DEFAULT_TRAINER_METRICS_PORT}; 0: none)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=64,
        help="concurrent reconciliations, each mostly waiting on the API (default 64)",
    )
    parser.add_argument("--version", action="version", version=f"rlaif-operator {__version__}")
    return parser


def _tolerations_from_env() -> tuple[dict[str, Any], ...]:
    raw = os.environ.get("RLAIF_TRAINER_TOLERATIONS", "").strip()
    if not raw:
        return ()
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("RLAIF_TRAINER_TOLERATIONS must be a JSON list of core/v1 Tolerations")
    return tuple(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import kopf

    from .metrics import Metrics
    from .settings import Settings

    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    kopf.configure(
        verbose=level <= logging.DEBUG,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(level)
    if level > logging.DEBUG:
        logging.getLogger("kopf").setLevel(max(level, logging.INFO))
        # "Handler ... succeeded" for every watch event is noise at INFO.
        logging.getLogger("kopf.objects").setLevel(max(level, logging.WARNING))
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    try:
        tolerations = _tolerations_from_env()
    except ValueError as err:
        print(f"rlaif-operator: {err}", file=sys.stderr)
        return 2
    settings = Settings(
        trainer_image=args.trainer_image,
        gpu_resource_name=args.gpu_resource_name,
        trainer_service_account=args.trainer_service_account,
        default_queue_name=args.default_queue_name,
        default_tolerations=tolerations,
        trainer_metrics_port=args.trainer_metrics_port,
    )
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)

    from . import handlers  # noqa: F401  (registers the kopf handlers)

    memo = kopf.Memo(operator_settings=settings, metrics=metrics, workers=args.workers)
    kopf_settings = kopf.OperatorSettings()
    # kopf's scanning lists and watches namespaces (to expand globs) and CRDs cluster-wide. Exact
    # namespace names and cluster-wide mode need neither; without scanning, a least-privilege
    # ServiceAccount meets no 403s and no start-up stall. Only patterns (*, ?, comma lists, !exclusions)
    # turn it on, as kopf itself tells exact names from patterns.
    kopf_settings.scanning.disabled = not any(set("*?,!") & set(ns) for ns in args.namespace or ())
    kopf.run(
        settings=kopf_settings,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespace or (),
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
        memo=memo,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
