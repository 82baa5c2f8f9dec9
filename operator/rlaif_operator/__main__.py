"""``rlaif-operator`` / ``python -m rlaif_operator``: run the operator.

kopf always runs standalone (no kopf peering). One replica, or several with ``--leader-election
LEASE``: then each process first takes a coordination.k8s.io Lease (:mod:`rlaif_operator.leader`
says why a Lease and not kopf peering), and only the holder starts kopf; the others wait as standbys.
kopf's identity is ``--identity`` (default ``$POD_NAME``): kopf otherwise asks getpass, which fails
for a uid without a passwd entry, as in the image.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Any

import rlaif_api.argtypes as argtypes

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
        "--progress-scrape-seconds",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often to read the running stage pods' metrics port (at the pod IP) for status.stages.<stage>.progress; "
        "progress is written at most once per 30 s per job either way (default 30; 0: never)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=64,
        help="concurrent reconciliations, each mostly waiting on the API (default 64)",
    )
    parser.add_argument(
        "--identity",
        default=None,
        help="this replica's name, for kopf and the Lease (default $POD_NAME, else host-pid)",
    )
    parser.add_argument(
        "--leader-election",
        metavar="LEASE",
        default=None,
        help="run as one of several replicas: act only while holding this coordination.k8s.io Lease",
    )
    parser.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the Lease (default $POD_NAMESPACE)",
    )
    parser.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        metavar="S",
        help="a standby takes over a Lease not renewed for this long (default 15)",
    )
    parser.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="S",
        help="the leader exits if it could not renew for this long (default 10; < lease duration)",
    )
    parser.add_argument(
        "--retry-period",
        type=float,
        default=2.0,
        metavar="S",
        help="interval between Lease reads/renewals (default 2; < renew deadline)",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    from .leader import Timing, default_identity

    timing = Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    if args.leader_election:
        if not args.leader_election_namespace:
            parser.error("--leader-election needs --leader-election-namespace (or $POD_NAMESPACE)")
        try:
            timing.check()
        except ValueError as err:
            parser.error(str(err))
    identity = args.identity or default_identity()
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
    from .outage import install

    install(level)  # an API-server outage: one warning and one line when it is back, no ERROR storm

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
        progress_scrape_seconds=max(args.progress_scrape_seconds, 0.0),
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
    run_kwargs: dict[str, Any] = dict(
        settings=kopf_settings,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespace or (),
        standalone=True,
        identity=identity,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
        memo=memo,
    )
    if not args.leader_election:
        kopf.run(**run_kwargs)
        return 0
    return asyncio.run(
        run_elected(
            args.leader_election,
            args.leader_election_namespace,
            identity,
            timing,
            args.liveness_port,
            run_kwargs,
        )
    )


async def run_elected(
    lease: str, namespace: str, identity: str, timing: Any, liveness_port: int, run_kwargs: dict[str, Any]
) -> int:
    """Wait as a standby until this replica holds the Lease, then run kopf while renewing it.

    Losing the Lease ends the process at once (exit 3) rather than stopping kopf gracefully: a
    graceful stop takes time in which this replica could still create Jobs next to the new leader.
    The kubelet restarts the container, which comes back as a standby.
    """
    import kopf

    from .kube import KubeClient
    from .leader import LeaderElector, LostLease, standby_health

    settings = run_kwargs["settings"]

    def client() -> KubeClient | None:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
        return KubeClient(info, timeout=max(1.0, timing.retry_period)) if info is not None else None

    first = client()
    if first is None:
        print("rlaif-operator: no credentials: neither a service account nor a kubeconfig", file=sys.stderr)
        return 2
    elector = LeaderElector(first, namespace, lease, identity, timing, relogin=client)
    stop_health = await standby_health(liveness_port) if liveness_port else None
    try:
        await elector.acquire()
    finally:
        if stop_health is not None:
            await stop_health()

    async def keep() -> None:
        try:
            await elector.keep()
        except LostLease as err:
            logging.getLogger("rlaif_operator").critical("%s: exiting so that only one replica acts", err)
            logging.shutdown()
            os._exit(3)

    keeper = asyncio.create_task(keep(), name="rlaif-lease")
    try:
        await kopf.operator(**run_kwargs)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        # kopf has stopped (its cleanup stopped the controller): nothing acts any more.
        await elector.release()
        await elector.client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
