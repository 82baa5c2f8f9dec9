"""Shared helpers and fixtures for the operator's integration tests (no tests in this module).

The operator runs as a subprocess (``python -m rlaif_operator --namespace <test ns>``), exactly as
in a pod, so tests can kill and restart it. Stage pods are fake (kwok): the RLAIFJob's
``spec.podTemplate.annotations`` tell kwok how long a pod runs, its exit code and its termination
message. The workspace is an existing claim pre-bound to a hostPath PersistentVolume, because the
test cluster has no volume provisioner.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import Cluster
from tests.cluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml"
GROUP_PATH = "/apis/rlaif.dev/v1alpha1"
SUMMARY = {
    "stage": "any",
    "consistency_rate": 0.9,
    "accuracy": 0.75,
    "final_reward": 0.4,
    "final_kl": 0.03,
    "win_rate_vs_initial": 0.68,
}


# --------------------------------------------------------------------------------------------------
# the operator process
# --------------------------------------------------------------------------------------------------


class OperatorProcess:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_dir: Path,
        extra_args: list[str] | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig  # default: the cluster's admin kubeconfig
        self.cluster = cluster
        self.namespace = namespace
        self.log_dir = log_dir
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.liveness_port = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60.0) -> None:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115 (closed with the process)
        env = self.cluster.env()
        env["PYTHONUNBUFFERED"] = "1"
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlaif_operator",
                "--namespace",
                self.namespace,
                "--trainer-image",
                "registry.example/rlaif-trainer:test",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.logs()}")
            url = f"http://127.0.0.1:{self.liveness_port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"operator did not become live within {timeout}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies or the OOM killer strikes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("operator-*.log"))
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (0 if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if not labels and key == name:
                return float(value)
            if key.startswith(name + "{"):
                got = ",".join(sorted(key[len(name) + 1 : -1].split(",")))
                if got == want:
                    return float(value)
        return 0.0


# --------------------------------------------------------------------------------------------------
# cluster helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_for(
        "RLAIFJob CRD established",
        lambda: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (
                cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rlaifjobs.rlaif.dev")
                or {}
            )
            .get("status", {})
            .get("conditions", [])
        ),
        timeout=30,
    )
    cluster.wait_for(
        "rlaifjobs served", lambda: cluster.get(f"{GROUP_PATH}/rlaifjobs") is not None, timeout=30
    )


@pytest.fixture
def operator(
    cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        errors = [line for line in op.logs().splitlines() if "Traceback" in line]
        print(op.logs()[-3000:])
        assert not errors, f"the operator logged tracebacks:\n{op.logs()}"


SERVICE_ACCOUNT = "rlaif-operator"


def service_account_kubeconfig(
    cluster: Cluster, namespace: str, rules: list[dict[str, Any]], path: Path, bind: bool = True
) -> Path:
    """A kubeconfig for a ServiceAccount that may do exactly ``rules`` in ``namespace``; with
    ``bind=False`` the Role is not bound yet (see :func:`bind_role`)."""
    sa = SERVICE_ACCOUNT
    cluster.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": sa}})
    cluster.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        {"metadata": {"name": sa}, "rules": rules},
    )
    if bind:
        bind_role(cluster, namespace)
    token = cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )["status"]["token"]
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [
            {
                "name": sa,
                "context": {"cluster": admin["clusters"][0]["name"], "user": sa, "namespace": namespace},
            }
        ],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def bind_role(cluster: Cluster, namespace: str) -> None:
    """Bind the test ServiceAccount's Role to it."""
    cluster.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        {
            "metadata": {"name": SERVICE_ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}],
        },
    )


def bind_claim(cluster: Cluster, namespace: str, claim: str, create_claim: bool = True) -> None:
    """A hostPath PV pre-bound to ``namespace/claim`` (and the claim itself unless the operator creates it)."""
    pv = f"pv-{namespace}-{claim}"[:63].rstrip("-") + "-" + uuid.uuid4().hex[:4]
    cluster.request(
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"rlaif.dev/test": "true"}},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": f"/tmp/rlaif-test-pv/{pv}"},
                "claimRef": {"namespace": namespace, "name": claim},
                "storageClassName": "",
            },
        },
    )
    if create_claim:
        cluster.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "",
                    "volumeName": pv,
                },
            },
        )


def rlaif_job(
    name: str,
    namespace: str,
    *,
    run_seconds: float = 0.3,
    exit_code: int | None = None,
    message: dict[str, Any] | str | None = None,
    claim: str | None = "workspace",
    stages: list[str] | None = None,
    **run_policy: Any,
) -> dict[str, Any]:
    annotations = {"rlaif.dev/test-run-seconds": str(run_seconds)}
    if exit_code is not None:
        annotations["rlaif.dev/test-exit-code"] = str(exit_code)
    text = message if isinstance(message, str) else json.dumps(message if message is not None else SUMMARY)
    annotations["rlaif.dev/test-termination-message"] = text
    spec: dict[str, Any] = {
        "policy": {"model": "embedded:smollm2-135m-instruct"},
        "dataset": {"prompts": "data/prompts.jsonl"},
        "labeler": {"provider": "hf", "mode": "pointwise", "principles": ["Is the answer helpful?"]},
        "runPolicy": {"backoffSeconds": 1, **run_policy},
        "podTemplate": {"annotations": annotations},
    }
    if claim is not None:
        spec["storage"] = {"persistentVolumeClaim": {"claimName": claim}}
    if stages is not None:
        spec["stages"] = stages
    return {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def create_job(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    ns = manifest["metadata"]["namespace"]
    created: dict[str, Any] = cluster.request("POST", f"{GROUP_PATH}/namespaces/{ns}/rlaifjobs", manifest)
    return created


def get_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = cluster.get(f"{GROUP_PATH}/namespaces/{namespace}/rlaifjobs/{name}")
    return result


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (get_job(cluster, namespace, name) or {}).get("status") or {}


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), {})


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 60.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        return st if st.get("phase") == phase else None

    try:
        result: dict[str, Any] = cluster.wait_for(f"{namespace}/{name} phase {phase}", check, timeout=timeout)
    except TimeoutError as err:
        raise TimeoutError(f"{err}; status now: {yaml.safe_dump(status(cluster, namespace, name))}") from None
    return result


def stage_jobs(cluster: Cluster, namespace: str, job: str | None = None) -> list[dict[str, Any]]:
    selector = f"?labelSelector=rlaif.dev/job%3D{job}" if job else "?labelSelector=rlaif.dev/stage"
    items: list[dict[str, Any]] = (
        cluster.get(f"/apis/batch/v1/namespaces/{namespace}/jobs{selector}") or {}
    ).get("items", [])
    return items


def job_names(cluster: Cluster, namespace: str, job: str | None = None) -> list[str]:
    return sorted(j["metadata"]["name"] for j in stage_jobs(cluster, namespace, job))


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        cluster.get(
            f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.kind%3DRLAIFJob,involvedObject.name%3D{name}"
        )
        or {}
    ).get("items", [])
    return items


def reasons(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in events(cluster, namespace, name)]


def wait_until(desc: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {desc}")


def pods_of(cluster: Cluster, namespace: str, job_name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        cluster.get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector=batch.kubernetes.io/job-name%3D{job_name}"
        )
        or {}
    ).get("items", [])
    return items


def patch_job(cluster: Cluster, namespace: str, name: str, patch: dict[str, Any]) -> Any:
    return cluster.request("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/rlaifjobs/{name}", patch)
