"""Helpers (no tests) shared by the chart integration tests: render with the pinned helm, apply, and run
the operator locally under the chart's ServiceAccount identity (a TokenRequest token)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import Cluster, binaries
from tests.cluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rlaif-operator"
PSS_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}

# Minimal stand-ins for the Prometheus Operator's CRDs, which the test API server does not have:
# enough for server-side apply to accept the chart's ServiceMonitor and PodMonitor objects (the
# real CRDs validate their fields further; the unit tests check the fields the chart sets).
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"))
]


def helm_path() -> Path:
    return binaries.ensure(["helm"])["helm"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def helm(
    cluster: Cluster, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_path()), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(release: str, namespace: str, *args: str) -> str:
    proc = subprocess.run(
        [str(helm_path()), "template", release, str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def delete_namespace(cluster: Cluster, name: str) -> None:
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def ensure_crds(cluster: Cluster, crds: list[dict[str, Any]]) -> None:
    for crd in crds:
        name = crd["metadata"]["name"]
        if cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") is None:
            cluster.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)

        def established(name: str = name) -> bool:
            got = cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
            return any(
                c["type"] == "Established" and c["status"] == "True"
                for c in got.get("status", {}).get("conditions", [])
            )

        cluster.wait_for(f"CRD {name} established", established, timeout=30)


def adopt_crd_for_release(cluster: Cluster, release: str, namespace: str) -> None:
    """Let ``helm install`` take over an RLAIFJob CRD that other tests in this session applied.

    Helm refuses to install over an existing object unless it carries the release's ownership
    metadata; adding it is Helm's documented way to adopt a resource.
    """
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rlaifjobs.rlaif.dev"
    if cluster.get(path) is None:
        return
    cluster.request(
        "PATCH",
        path,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": release,
                    "meta.helm.sh/release-namespace": namespace,
                },
            }
        },
    )


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<name> (TokenRequest API)."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    base64.b64decode(ca)  # sanity
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": f"{namespace}-{name}", "user": {"token": token}}],
        "contexts": [
            {
                "name": "sa",
                "context": {"cluster": "test", "user": f"{namespace}-{name}", "namespace": namespace},
            }
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(cluster: Cluster, kubeconfig: Path, verb: str, resource: str, namespace: str) -> bool:
    """``kubectl auth can-i`` as the kubeconfig's user; ``resource`` may be ``plural.group/subresource``."""
    resource, _, sub = resource.partition("/")
    cmd = [
        str(cluster.binaries["kubectl"]),
        "--kubeconfig",
        str(kubeconfig),
        "auth",
        "can-i",
        verb,
        resource,
        "-n",
        namespace,
    ]
    if sub:
        cmd.append(f"--subresource={sub}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() == "yes"


def whoami(cluster: Cluster, kubeconfig: Path) -> str:
    proc = subprocess.run(
        [str(cluster.binaries["kubectl"]), "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["status"]["userInfo"]["username"]


def operator_command(deployment: dict[str, Any]) -> tuple[list[str], dict[str, str], int, int]:
    """The rendered Deployment's operator command line and environment, for a local process.

    Ports are replaced by free local ones (returned: liveness, metrics); env vars that come from
    the downward API get fixed values.
    """
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    liveness, metrics = free_port(), free_port()
    args = []
    for arg in container["args"]:
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics}"
        elif arg.startswith("--liveness-port="):
            arg = f"--liveness-port={liveness}"
        args.append(arg)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env["POD_NAME"] = "rlaif-operator-test"
    return [sys.executable, "-m", "rlaif_operator", *args], env, liveness, metrics


@contextmanager
def running_operator(
    cmd: list[str], env: dict[str, str], kubeconfig: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    full_env.update(env)
    full_env["KUBECONFIG"] = str(kubeconfig)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT)])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


def fake_volume(cluster: Cluster, name: str, size: str = "100Gi") -> None:
    """A PersistentVolume the workspace claim can bind to (the test cluster has no provisioner)."""
    cluster.request(
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"rlaif.dev/test": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": f"/tmp/{name}"},
            },
        },
    )


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phases: set[str], timeout: float
) -> dict[str, Any]:
    path = f"/apis/rlaif.dev/v1alpha1/namespaces/{namespace}/rlaifjobs/{name}"
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        last = cluster.get(path) or {}
        return (last.get("status") or {}).get("phase") in phases

    try:
        cluster.wait_for(
            f"RLAIFJob {namespace}/{name} in {sorted(phases)}", done, timeout=timeout, interval=0.5
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {json.dumps(last.get('status'), indent=1)}") from None
    return last


def diagnostics(cluster: Cluster, namespace: str, log: Path | None) -> str:
    parts = []
    for args in (
        ("get", "rlaifjobs,jobs,pods,pvc,configmaps", "-n", namespace, "-o", "wide"),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
    ):
        proc = cluster.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if log is not None and log.exists():
        parts.append("operator log (tail):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    return "\n".join(parts)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"operator exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"operator not healthy after {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")
