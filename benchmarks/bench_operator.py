"""Operator benchmark: apply N RLAIFJobs at once against the real (local) control plane.

Starts the test control plane (``tests.cluster``: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok with fake GPU nodes), installs the CRD, then for each N runs a fresh operator
subprocess on a fresh namespace, creates N RLAIFJobs as fast as 16 client threads can, and
measures from the client side, with watches on stage Jobs and Pods:

* apply -> first stage Job: from the RLAIFJob's create call returning to its ``<job>-label-1``
  Job appearing in a watch (p50/p99/max);
* stage completion -> next stage Job: from a stage pod being seen Succeeded to the next stage's
  Job being seen (p50/p99/max);
* the time for all N to reach Succeeded (and how many did not: "stuck");
* the operator's peak RSS (VmHWM);
* API requests per job: the operator's own requests (``rlaif_api_requests_total``) and the API
  server's ``apiserver_request_total`` delta (every client: controllers, scheduler, kwok, this
  script), both divided by N.

kwok completes each stage pod after ``--run-seconds``. Run ``python benchmarks/bench_operator.py --help``.

With ``--progress-scrape-seconds 0 30`` each N runs twice, without and with the live progress
scrape (issue 14): kwok then gives pods loopback IPs (127.0.0.0/16), and one real trainer metrics
server (``rlaif_trainer.metrics``, its progress advancing every second) listens on all of them, so
the operator scrapes N real endpoints; the status writes per job (the operator's PATCHes) and its
CPU seconds compare the two.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import Cluster  # noqa: E402
from tests.cluster.cluster import free_port  # noqa: E402

GROUP_PATH = "/apis/rlaif.dev/v1alpha1"
STAGES = ("label", "reward", "rl", "evaluate")


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


class Watcher(threading.Thread):
    """Records when each object of a kind is first seen (and when stage pods are seen Succeeded)."""

    def __init__(self, cluster: Cluster, path: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.path = path
        self.first_seen: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}  # pods: by their Job's name
        self.phase: dict[str, str] = {}  # RLAIFJobs: status.phase
        self.phase_seen: dict[str, float] = {}  # RLAIFJobs: when the current phase was first seen
        self.stop_flag = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        rv = ""
        while not self.stop_flag.is_set():
            url = f"{self.cluster.server}{self.path}?watch=1&timeoutSeconds=600&allowWatchBookmarks=true"
            if rv:
                url += f"&resourceVersion={rv}"
            req = urllib.request.Request(url, headers={"Accept": "application/json"})
            try:
                with urllib.request.urlopen(req, context=self.cluster._ssl, timeout=700) as resp:
                    self.ready.set()
                    for line in resp:
                        if self.stop_flag.is_set():
                            return
                        now = time.time()
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        meta = obj.get("metadata") or {}
                        rv = meta.get("resourceVersion", rv)
                        if event.get("type") == "BOOKMARK":
                            continue
                        name = meta.get("name", "")
                        self.first_seen.setdefault(name, now)
                        phase = (obj.get("status") or {}).get("phase")
                        if obj.get("kind") == "RLAIFJob" and phase and self.phase.get(name) != phase:
                            self.phase[name] = phase
                            self.phase_seen[name] = now
                        if phase == "Succeeded":
                            job = (meta.get("labels") or {}).get("batch.kubernetes.io/job-name")
                            if job:
                                self.succeeded.setdefault(job, now)
            except Exception:
                time.sleep(0.2)


def apiserver_requests(cluster: Cluster) -> dict[str, float]:
    """``apiserver_request_total`` summed by resource (all verbs, codes, clients)."""
    req = urllib.request.Request(f"{cluster.server}/metrics")
    with urllib.request.urlopen(req, context=cluster._ssl, timeout=30) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(
            part.split("=", 1)
            for part in labels[len("apiserver_request_total{") : -1].split(",")
            if "=" in part
        )
        resource = fields.get("resource", '""').strip('"') or "(none)"
        totals[resource] = totals.get(resource, 0.0) + float(value)
    return totals


def operator_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def operator_requests(port: int, method: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("rlaif_api_requests_total{") and f'method="{method}"' in line
    )


# A trainer process's metrics server (the trainer's own code), whose progress advances each second.
TRAINER_METRICS = """
import sys, time
from rlaif_trainer import metrics
rec = metrics.serve(int(sys.argv[1]), "0.0.0.0")
i = 0
while True:
    i += 1
    rec.record_step(samples=8, seconds=1.0, loss=1.0 / i, reward=0.01 * i, kl=0.001 * i)
    rec.record_progress((i % 600) / 600, pairs_labelled=i)
    time.sleep(1.0)
"""


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifest(name: str, namespace: str, run_seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "policy": {"model": "embedded:smollm2-135m-instruct"},
            "dataset": {"prompts": "data/prompts.jsonl"},
            "labeler": {"provider": "hf", "mode": "pointwise", "principles": ["Is the answer helpful?"]},
            "storage": {"persistentVolumeClaim": {"claimName": "workspace"}},
            "podTemplate": {
                "annotations": {
                    "rlaif.dev/test-run-seconds": str(run_seconds),
                    "rlaif.dev/test-termination-message": json.dumps({"win_rate": 0.6, "accuracy": 0.7}),
                }
            },
        },
    }


def shared_claim(cluster: Cluster, namespace: str) -> None:
    pv = f"bench-{namespace}"
    cluster.request(
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany"],
                "hostPath": {"path": f"/tmp/{pv}"},
                "claimRef": {"namespace": namespace, "name": "workspace"},
                "storageClassName": "",
            },
        },
    )
    cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "workspace"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "100Gi"}},
                "storageClassName": "",
                "volumeName": pv,
            },
        },
    )


def run_one(
    cluster: Cluster, n: int, args: argparse.Namespace, log_dir: Path, scrape: float | None = None
) -> dict[str, Any]:
    namespace = f"bench-n{n}-{int(time.time()) % 100000}"
    cluster.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    shared_claim(cluster, namespace)
    metrics_port, liveness_port = free_port(), free_port()
    log_path = log_dir / f"operator-{namespace}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "rlaif_operator", "--namespace", namespace,
                "--trainer-image", "registry.example/rlaif-trainer:bench",
                "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port),
                "--workers", str(args.workers), "--log-level", "WARNING",
                *(() if scrape is None else (
                    "--progress-scrape-seconds", str(scrape), "--trainer-metrics-port", str(args.trainer_port),
                )),
            ],
            stdout=log, stderr=subprocess.STDOUT, env=cluster.env(), cwd=ROOT,
        )  # fmt: skip
    try:
        cluster.wait_for(
            "operator liveness",
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=1).status == 200
            ),
            timeout=60,
        )
        jobs_w = Watcher(cluster, f"/apis/batch/v1/namespaces/{namespace}/jobs")
        pods_w = Watcher(cluster, f"/api/v1/namespaces/{namespace}/pods")
        rlaif_w = Watcher(cluster, f"{GROUP_PATH}/namespaces/{namespace}/rlaifjobs")
        for w in (jobs_w, pods_w, rlaif_w):
            w.start()
        for w in (jobs_w, pods_w, rlaif_w):
            w.ready.wait(30)
        api_before = apiserver_requests(cluster)
        op_before = operator_metric(metrics_port, "rlaif_api_requests_total")
        patch_before = operator_requests(metrics_port, "PATCH")

        applied: dict[str, float] = {}
        names = [f"job-{i:04d}" for i in range(n)]

        def apply(name: str) -> None:
            for _ in range(5):
                try:
                    cluster.request(
                        "POST",
                        f"{GROUP_PATH}/namespaces/{namespace}/rlaifjobs",
                        manifest(name, namespace, args.run_seconds),
                    )
                except Exception as err:  # a slow API server: the create may or may not have landed
                    if "AlreadyExists" not in str(err):
                        time.sleep(0.5)
                        continue
                applied[name] = time.time()
                return

        t0 = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(apply, names))
        apply_seconds = time.time() - t0

        done_at: float | None = None
        deadline = time.time() + args.timeout
        phases: dict[str, int] = {}
        while time.time() < deadline:
            phases = {}
            for name in names:
                phase = rlaif_w.phase.get(name, "Pending")
                phases[phase] = phases.get(phase, 0) + 1
            if phases.get("Succeeded", 0) == n:
                done_at = max(rlaif_w.phase_seen[name] for name in names)
                break
            time.sleep(0.5)
        time.sleep(1.0)
        api_after = apiserver_requests(cluster)
        op_after = operator_metric(metrics_port, "rlaif_api_requests_total")
        patch_after = operator_requests(metrics_port, "PATCH")
        rss = peak_rss_mib(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            (log_dir / f"metrics-{namespace}.txt").write_bytes(resp.read())
        reconciles = operator_metric(metrics_port, "rlaif_reconcile_duration_seconds_count")
        reconcile_seconds = operator_metric(metrics_port, "rlaif_reconcile_duration_seconds_sum")
        cpu_seconds = sum(
            int(x) for x in Path(f"/proc/{proc.pid}/stat").read_text().split()[13:15]
        ) / os.sysconf("SC_CLK_TCK")
        for w in (jobs_w, pods_w, rlaif_w):
            w.stop_flag.set()

        first_job = [
            jobs_w.first_seen[f"{name}-label-1"] - applied[name]
            for name in names
            if f"{name}-label-1" in jobs_w.first_seen
        ]
        handoff: list[float] = []
        for name in names:
            for prev, nxt in itertools.pairwise(STAGES):
                done = pods_w.succeeded.get(f"{name}-{prev}-1")
                seen = jobs_w.first_seen.get(f"{name}-{nxt}-1")
                if done is not None and seen is not None:
                    handoff.append(seen - done)
        # The same latency from server-side timestamps (1 s resolution, but free of this client's
        # own scheduling delays): RLAIFJob creationTimestamp -> label Job creationTimestamp.
        server_side: list[float] = []
        try:
            created = {
                j["metadata"]["name"]: j["metadata"]["creationTimestamp"]
                for j in (cluster.get(f"{GROUP_PATH}/namespaces/{namespace}/rlaifjobs") or {}).get(
                    "items", []
                )
            }
            for j in (
                cluster.get(
                    f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector=rlaif.dev/stage%3Dlabel"
                )
                or {}
            ).get("items", []):
                owner = j["metadata"]["ownerReferences"][0]["name"]
                if owner in created:
                    server_side.append(
                        (
                            parse_ts(j["metadata"]["creationTimestamp"]) - parse_ts(created[owner])
                        ).total_seconds()
                    )
        except Exception as err:  # the server-side view is a cross-check, not the measurement
            print(f"server-side timestamps unavailable: {err}", file=sys.stderr)
        api_delta = {k: api_after.get(k, 0.0) - api_before.get(k, 0.0) for k in api_after}
        api_delta = {k: v for k, v in sorted(api_delta.items(), key=lambda kv: -kv[1]) if v > 0}
        duplicates = sum(1 for j in jobs_w.first_seen if not j.endswith("-1"))
        return {
            "n": n,
            "namespace": namespace,
            "apply_seconds": apply_seconds,
            "apply_to_first_job_s": summary(first_job),
            "stage_done_to_next_job_s": summary(handoff),
            "apply_to_first_job_server_timestamps_s": summary(server_side),
            "all_succeeded_s": (done_at - t0) if done_at else None,
            "stuck": n - phases.get("Succeeded", 0),
            "phases_at_end": phases,
            "stage_jobs": len(jobs_w.first_seen),
            "retry_or_duplicate_jobs": duplicates,
            "operator_peak_rss_mib": rss,
            "operator_cpu_seconds": cpu_seconds,
            "reconciles": reconciles,
            "reconcile_seconds_mean": reconcile_seconds / reconciles if reconciles else None,
            "operator_api_requests_per_job": (op_after - op_before) / n,
            "progress_scrape_seconds": scrape,
            # the status writes (and any ConfigMap update)
            "operator_patches_per_job": (patch_after - patch_before) / n,
            "apiserver_requests_per_job": sum(api_delta.values()) / n,
            "apiserver_requests_per_job_by_resource": {
                k: round(v / n, 2) for k, v in list(api_delta.items())[:12]
            },
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_operator.py",
        description="Apply N RLAIFJobs at once against the local control plane and measure the operator.",
    )
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[50, 200, 500], help="values of N (default 50 200 500)"
    )
    parser.add_argument(
        "--run-seconds", type=float, default=1.0, help="how long kwok runs each stage pod (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="give up waiting for Succeeded after this many seconds per N",
    )
    parser.add_argument("--workers", type=int, default=64, help="operator --workers (default 64)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--progress-scrape-seconds",
        type=float,
        nargs="+",
        help="run each N once per value with the operator's live progress scrape at this interval (0: off), "
        "against a real trainer metrics server on the fake pods' loopback IPs (default: the operator's default, no server)",
    )
    args = parser.parse_args(argv)

    max_n = max(args.jobs)
    progress = args.progress_scrape_seconds is not None
    cluster = Cluster(
        nodes=4,
        gpus_per_node=max_n,
        node_pods=max_n * 2 + 50,
        **({"pod_cidr": "127.0.0.1/16"} if progress else {}),  # type: ignore[arg-type]
    )
    cluster.start()
    server: subprocess.Popen[bytes] | None = None
    if progress:
        args.trainer_port = free_port()
        server = subprocess.Popen([sys.executable, "-c", TRAINER_METRICS, str(args.trainer_port)], cwd=ROOT)
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", cluster.dir / "bench-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml"))
        cluster.wait_for("CRD served", lambda: cluster.get(f"{GROUP_PATH}/rlaifjobs") is not None, timeout=60)
        for n in args.jobs:
            for scrape in args.progress_scrape_seconds or [None]:
                result = run_one(cluster, n, args, log_dir, scrape)
                results.append(result)
                print(json.dumps(result, indent=2), flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        cluster.stop()
    machine = {
        "cpus": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "results": results,
    }
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    print(
        "\n| N | scrape (s) | apply→Job p50 / p99 (s) | stage done→next Job p50 / p99 (s) | all Succeeded (s) | stuck | operator peak RSS (MiB) | operator CPU (s) | operator API req/job | operator PATCH/job | apiserver req/job |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, h = r["apply_to_first_job_s"], r["stage_done_to_next_job_s"]
        print(
            f"| {r['n']} | {r['progress_scrape_seconds'] if r['progress_scrape_seconds'] is not None else '-'} "
            f"| {fmt(a['p50'])} / {fmt(a['p99'])} | {fmt(h['p50'])} / {fmt(h['p99'])} | {fmt(r['all_succeeded_s'])} "
            f"| {r['stuck']} | {r['operator_peak_rss_mib']:.0f} | {r['operator_cpu_seconds']:.1f} | {r['operator_api_requests_per_job']:.1f} "
            f"| {r['operator_patches_per_job']:.2f} | {r['apiserver_requests_per_job']:.1f} |"
        )
    return 0 if all(r["stuck"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
