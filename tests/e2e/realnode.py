"""Helpers (no tests) for the real-node e2e tests: install the operator with its Helm chart from its
own image, give a namespace a local PersistentVolume workspace, apply an RLAIFJob with kubectl, and
watch its stage pods (termination messages, timings, metrics scrapes) while it runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import Cluster, binaries
from tests.cluster.node import NODE_LABEL, NODE_TAINT

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rlaif-operator"
EXAMPLES = ROOT / "examples"
PSS_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
STAGE_UID = 1000  # builders.NONROOT_UID: the uid (and fsGroup) stage pods run as
REAL_NODE_PLACEMENT = {
    "nodeSelector": {NODE_LABEL: "true"},
    "tolerations": [{"key": NODE_TAINT["key"], "operator": "Exists", "effect": NODE_TAINT["effect"]}],
}
# The summary key each stage reports and the status.results field the operator must copy it to:
# written out here, from the outside, so that a renamed key on either side fails this test.
RESULT_FIELDS = {
    "label": {"consistency_rate": "labelerPositionConsistency"},
    "reward": {"accuracy": "rewardModelAccuracy"},
    "rl": {"final_reward": "finalReward", "final_kl": "finalKl"},
    "evaluate": {
        "win_rate_vs_initial": "winRateVsInitial",
        "win_rate_ci_low": "winRateCiLow",
        "win_rate_ci_high": "winRateCiHigh",
    },
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = binaries.ensure(["helm"])["helm"]
    proc = subprocess.run(
        [str(exe), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env(),
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def create_namespace(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    cluster.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
    )
    cluster.wait_for(
        f"ServiceAccount {name}/default",
        lambda: cluster.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
    )


@dataclass
class Operator:
    release: str
    namespace: str
    fullname: str

    def pods(self, cluster: Cluster) -> list[dict[str, Any]]:
        sel = "app.kubernetes.io/component=operator"
        got = cluster.get(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={sel}") or {"items": []}
        return list(got["items"])


def install_operator(
    cluster: Cluster,
    job_namespaces: list[str],
    *,
    release: str = "rlaif",
    extra_values: dict[str, Any] | None = None,
) -> Operator:
    """``helm install`` the chart with the locally built images, into its own restricted namespace."""
    assert cluster.node is not None
    op, trainer = cluster.node.loaded["operator"], cluster.node.loaded["trainer"]
    namespace = unique("rlaif-system")
    create_namespace(cluster, namespace, PSS_RESTRICTED)
    values: dict[str, Any] = {
        # Imported into the node's containerd; there is no registry to pull from.
        "image": {"repository": op.repository, "tag": op.tag, "pullPolicy": "Never"},
        "trainer": {
            "image": {"repository": trainer.repository, "tag": trainer.tag},
            "serviceAccount": {"extraNamespaces": job_namespaces},
        },
        **REAL_NODE_PLACEMENT,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        **(extra_values or {}),
    }
    values_file = cluster.dir / f"values-{namespace}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm(
        cluster, "install", release, str(CHART), "--namespace", namespace, "--values", str(values_file),
        "--wait", "--timeout", "240s",
    )  # fmt: skip
    return Operator(release, namespace, f"{release}-rlaif-operator")


def sole_operator(cluster: Cluster, job_namespaces: list[str], release: str) -> Operator:
    """The chart's operator for ``job_namespaces``, alone: releases other modules left (each watches
    every namespace, so two would race for a job) are uninstalled first. A CRD kept from one of
    them (crds.keep) stays, and the new release then does not install its own."""
    releases = json.loads(helm(cluster, "list", "--all-namespaces", "--output", "json").stdout or "[]")
    for rel in releases:
        helm(
            cluster, "uninstall", rel["name"], "--namespace", rel["namespace"], "--wait", "--timeout", "120s"
        )
    crd = cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rlaifjobs.rlaif.dev")
    extra = {"crds": {"install": False}} if crd is not None else {}
    return install_operator(cluster, job_namespaces, release=release, extra_values=extra)


def local_workspace(cluster: Cluster, namespace: str, name: str = "workspace", size: str = "5Gi") -> Path:
    """A local PersistentVolume on the real node, pre-bound to a claim ``name`` in ``namespace``;
    returns the directory on this machine that backs it (the pods' /workspace)."""
    assert cluster.node is not None
    path = cluster.dir / "volumes" / namespace
    path.mkdir(parents=True)
    # Stage pods run as uid/gid 1000 (fsGroup too); the directory is theirs.
    shutil.chown(path, STAGE_UID, STAGE_UID)
    path.chmod(0o775)
    pv_name = f"{namespace}-{name}"
    cluster.request(
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "local": {"path": str(path)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [cluster.node.name],
                                    }
                                ]
                            }
                        ]
                    }
                },
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
    )
    cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": size}},
            },
        },
    )
    cluster.wait_for(
        f"claim {namespace}/{name} Bound",
        lambda: (
            (cluster.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}") or {})
            .get("status", {})
            .get("phase")
            == "Bound"
        ),
        timeout=60,
    )
    return path


def put_file(workspace: Path, rel: str, text: str) -> None:
    dest = workspace / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    for d in [dest.parent, *dest.parent.parents]:
        if d == workspace or workspace not in d.parents:
            break
        shutil.chown(d, STAGE_UID, STAGE_UID)
    dest.write_text(text)
    shutil.chown(dest, STAGE_UID, STAGE_UID)


def fast_quickstart(name: str, claim: str, **overrides: Any) -> dict[str, Any]:
    """examples/quickstart-reward-model.yaml (the quickstart's task through all four stages), sized
    for a 2-core machine: the embedded model with fewer pairs, steps and tokens; pairwise labeling
    so the labeler's position consistency is reported; placed on the real node with the workspace
    claim ``claim``. The reward model's quality gate is off: 4 pairs cannot show better than chance,
    and this checks the plumbing, not the model (the gate has tests of its own)."""
    job = yaml.safe_load((EXAMPLES / "quickstart-reward-model.yaml").read_text())
    spec = job["spec"]
    job["metadata"] = {"name": name}
    spec["dataset"]["maxPrompts"] = 4
    for key in ("calibrationPairs", "evalReferences"):  # the calibration and ROUGE-L: tested elsewhere
        spec["dataset"].pop(key, None)
    spec["labeler"] = {"provider": "hf", "mode": "pairwise", "batchSize": 4}
    spec["rewardModel"].update({"epochs": 1, "batchSize": 4, "evalFraction": 0.25, "minHeldOutAccuracy": 0})
    spec["rl"].update(
        {"steps": 2, "batchSize": 2, "samplesPerPrompt": 2, "maxNewTokens": 12, "checkpointEvery": 1}
    )
    spec["evaluation"] = {"samples": 4, "samplesPerPrompt": 1}
    # No CPU request or limit: a stage may use both cores; memory bounded.
    spec["resources"] = {"default": {"gpus": 0, "memory": "3Gi"}}
    spec["storage"] = {"persistentVolumeClaim": {"claimName": claim}}
    spec["podTemplate"] = dict(REAL_NODE_PLACEMENT)
    for key, value in overrides.items():
        spec[key] = value
    return job


def stage_inputs(workspace: Path) -> None:
    """The prompt files the quickstart job names, at the same relative paths on the volume."""
    for f in ("quickstart_prompts.jsonl", "quickstart_eval_prompts.jsonl"):
        put_file(workspace, f"data/{f}", (EXAMPLES / "data" / f).read_text())


def kubectl_apply_file(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> Path:
    path = cluster.dir / f"{namespace}-{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    return path


def rlaifjob(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get(f"/apis/rlaif.dev/v1alpha1/namespaces/{namespace}/rlaifjobs/{name}") or {}


@dataclass
class StagePod:
    name: str
    stage: str
    attempt: str
    node: str | None = None
    image: str | None = None
    ip: str | None = None
    exit_code: int | None = None
    message: str | None = None
    started: str | None = None
    finished: str | None = None
    metrics: str | None = None  # a /metrics body scraped while it ran
    running: bool = False


@dataclass
class Watcher:
    """Polls the job's stage pods and keeps what a finished pod reported, so nothing is lost when the
    operator or the Job controller cleans pods up."""

    cluster: Cluster
    namespace: str
    metrics_port: int = 9400
    pods: dict[str, StagePod] = field(default_factory=dict)

    def poll(self) -> None:
        got = self.cluster.get(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector=rlaif.dev/stage") or {
            "items": []
        }
        for pod in got["items"]:
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
            labels = meta.get("labels", {})
            sp = self.pods.setdefault(
                meta["name"],
                StagePod(meta["name"], labels["rlaif.dev/stage"], labels.get("rlaif.dev/attempt", "")),
            )
            sp.node = spec.get("nodeName")
            sp.image = spec["containers"][0]["image"]
            sp.ip = status.get("podIP") or sp.ip
            for cs in status.get("containerStatuses") or []:
                sp.running = bool((cs.get("state") or {}).get("running"))
                term = (cs.get("state") or {}).get("terminated")
                if term:
                    sp.exit_code = term.get("exitCode")
                    sp.message = term.get("message")
                    sp.started = term.get("startedAt")
                    sp.finished = term.get("finishedAt")
                elif (cs.get("state") or {}).get("running") and sp.metrics is None and sp.ip:
                    sp.metrics = scrape(f"http://{sp.ip}:{self.metrics_port}/metrics")

    def by_stage(self, stage: str) -> list[StagePod]:
        return sorted((p for p in self.pods.values() if p.stage == stage), key=lambda p: p.attempt)

    def summary(self, stage: str) -> dict[str, Any]:
        """The JSON summary from the last successful pod of ``stage``."""
        done = [p for p in self.by_stage(stage) if p.exit_code == 0 and p.message]
        assert done, f"no successful {stage} pod with a termination message: {self.by_stage(stage)}"
        return dict(json.loads(done[-1].message or "{}"))


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return str(r.read().decode())
    except OSError:
        return None


def wait_for(cluster: Cluster, watcher: Watcher, desc: str, fn: Any, timeout: float = 900) -> None:
    """Poll the stage pods (keeping what they report) until ``fn()`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        watcher.poll()
        if fn():
            return
        cluster.check_alive()
        time.sleep(1)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {desc}\n" + diagnostics(cluster, watcher.namespace)
    )


def wait_for_phase(
    cluster: Cluster, namespace: str, name: str, phases: set[str], watcher: Watcher, timeout: float
) -> dict[str, Any]:
    end = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < end:
        watcher.poll()
        job = rlaifjob(cluster, namespace, name)
        if job.get("status", {}).get("phase") in phases:
            watcher.poll()
            return job
        cluster.check_alive()
        time.sleep(2)
    raise AssertionError(
        f"RLAIFJob {namespace}/{name} not in {phases} after {timeout:.0f}s: {json.dumps(job.get('status'))}\n"
        + diagnostics(cluster, namespace)
    )


def diagnostics(cluster: Cluster, namespace: str) -> str:
    parts = []
    for args in (
        ("get", "pods,jobs", "-n", namespace, "-o", "wide"),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
    ):
        parts.append(cluster.kubectl(*args, check=False).stdout)
    pods = cluster.get(f"/api/v1/namespaces/{namespace}/pods") or {"items": []}
    for pod in pods["items"][-3:]:
        parts.append(
            f"--- logs {pod['metadata']['name']}:\n"
            + cluster.kubectl(
                "logs", "-n", namespace, pod["metadata"]["name"], "--tail=30", check=False
            ).stdout
        )
    return "\n".join(parts)


def printer_table(text: str) -> list[dict[str, str]]:
    """Rows of a ``kubectl get`` table as {column: cell}, cut at the header's column offsets.

    kubectl pads every column to its widest cell, so each cell starts where its header does;
    splitting on whitespace would break cells that hold spaces (the -o wide Message column)."""
    header, *rows = text.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    bounds = [*starts[1:], None]
    return [
        {name: row[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)}
        for row in rows
    ]


def seconds_between(start: str | None, end: str | None) -> float:
    from datetime import datetime

    if not start or not end:
        return float("nan")
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()
