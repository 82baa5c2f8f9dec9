"""``python -m tests.cluster {build,up}``: build/locate the binaries, or run a control plane by hand."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from . import binaries
from .cluster import Cluster, ClusterError


def _cmd_build(args: argparse.Namespace) -> int:
    names = args.names or list(binaries.SPECS)
    unknown = [n for n in names if n not in binaries.SPECS]
    if unknown:
        print(
            f"unknown binaries: {', '.join(unknown)}; choose from {', '.join(binaries.SPECS)}",
            file=sys.stderr,
        )
        return 2
    t0 = time.monotonic()
    try:
        paths = binaries.ensure(names, build=not args.no_build)
    except binaries.BinaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in names:
        print(f"{name:<24} {paths[name]}\n{'':<24} {binaries.version_of(name, paths[name])}")
    print(f"# {time.monotonic() - t0:.1f}s; cache: {binaries.cache_dir()}", file=sys.stderr)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = Cluster(nodes=args.nodes, gpus_per_node=args.gpus, workdir=args.dir, real_node=args.real_node)

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        cluster.start()
        print(f"control plane up in {cluster.startup_seconds:.1f}s (logs: {cluster.dir / 'logs'})")
        if args.kueue:
            from .kueue import FLAVOR, Kueue

            kueue = Kueue(cluster).start()
            print(f"kueue up in {kueue.startup_seconds:.1f}s (ResourceFlavor {FLAVOR})")
        print("  " + ", ".join(f"{k}: {v}s" for k, v in cluster.timings.items()))
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print("Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(1)
            cluster.check_alive()
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
    except (ClusterError, binaries.BinaryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if cluster.started:
            print(cluster.log_report(), file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["images"]:  # its own parser (tests/cluster/images.py)
        from . import images

        return images.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description="Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler, kwok) for rlaif-operator's integration tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="build or locate the pinned binaries and print their paths and versions",
        description="Build (from the Go module proxy) or locate the pinned binaries. Honours "
        "TEST_ASSET_<NAME> (e.g. TEST_ASSET_KUBE_APISERVER) and KUBEBUILDER_ASSETS.",
    )
    b.add_argument("names", nargs="*", help=f"binaries (default: all of {', '.join(binaries.SPECS)})")
    b.add_argument("--no-build", action="store_true", help="only locate; fail if something is missing")
    b.set_defaults(func=_cmd_build)
    u = sub.add_parser(
        "up",
        help="start a control plane and wait until Ctrl-C",
        description="Start a control plane, print its kubeconfig, and keep it running until Ctrl-C.",
    )
    u.add_argument("--nodes", type=int, default=2, help="number of kwok GPU nodes (default 2)")
    u.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node (default 8)")
    u.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="work dir to use and keep (default: a temp dir, removed on exit)",
    )
    u.add_argument(
        "--real-node",
        action="store_true",
        help="also start the real kubelet node rlaif-node-0 (containerd, kubelet, kube-proxy; needs root "
        "and scripts/install-node-deps.sh)",
    )
    u.add_argument(
        "--kueue",
        action="store_true",
        help="also start Kueue (tests/cluster/kueue.py: CRDs, webhooks on loopback, batch/job integration)",
    )
    u.set_defaults(func=_cmd_up)
    sub.add_parser(
        "images",
        help="build the Dockerfile's operator and trainer images with buildah (see images --help)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
