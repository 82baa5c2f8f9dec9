"""The quickstart RLAIFJob end to end on the real test node (tests/cluster/node.py).

The operator runs as a pod, installed with the Helm chart from the image built from the Dockerfile
(``operator`` target), under the chart's ServiceAccount and RBAC; it reaches the API server through
the ``kubernetes`` Service (kube-proxy). The job is a smaller quickstart (same four stages, embedded
model, fewer pairs and steps) applied with ``kubectl apply -f`` in a namespace that enforces the
``restricted`` Pod Security Standard; each stage runs ``rlaif-train`` in the ``trainer`` image on
the real node with a local PersistentVolume as its workspace. Nothing is mocked.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.cluster.kueue import Kueue
from tests.cluster.node import NODE_NAME

from .realnode import (
    PSS_RESTRICTED,
    REAL_NODE_PLACEMENT,
    RESULT_FIELDS,
    STAGE_UID,
    Operator,
    Watcher,
    create_namespace,
    fast_quickstart,
    helm,
    install_operator,
    kubectl_apply_file,
    local_workspace,
    printer_table,
    put_file,
    rlaifjob,
    scrape,
    seconds_between,
    stage_inputs,
    unique,
    wait_for,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

STAGES = ("label", "reward", "rl", "evaluate")
TESTS = ("quickstart", "badprompts", "resume", "suspend", "preempt")


@pytest.fixture(scope="module")
def setup(node_cluster: Cluster) -> tuple[Operator, dict[str, str]]:
    """One operator for the module (it watches every namespace, so two would race), installed by
    Helm; one restricted namespace per test, each with the trainer ServiceAccount from the chart."""
    namespaces = {t: unique(t) for t in TESTS}
    for ns in namespaces.values():
        create_namespace(node_cluster, ns, PSS_RESTRICTED)
    return install_operator(node_cluster, list(namespaces.values())), namespaces


def test_quickstart_runs_end_to_end_on_the_real_node(node_cluster: Cluster, setup) -> None:
    """All four stages on real pods; midway through the reward stage the operator pod is deleted
    (its Deployment starts another): no stage runs twice and every result is recorded."""
    c = node_cluster
    operator, namespaces = setup
    ns = namespaces["quickstart"]
    (op_pod,) = operator.pods(c)
    assert op_pod["spec"]["nodeName"] == NODE_NAME
    assert op_pod["spec"]["serviceAccountName"] == operator.fullname
    assert op_pod["spec"]["containers"][0]["image"] == c.node.loaded["operator"].name  # type: ignore[union-attr]

    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    job = fast_quickstart("quickstart", "workspace")
    t0 = time.monotonic()
    kubectl_apply_file(c, ns, job)
    watcher = Watcher(c, ns)

    # The fault: delete the operator pod while the reward stage's pod runs.
    wait_for(
        c,
        watcher,
        "a running reward pod",
        lambda: any(p.stage == "reward" and p.running for p in watcher.pods.values()),
    )
    c.request("DELETE", f"/api/v1/namespaces/{operator.namespace}/pods/{op_pod['metadata']['name']}")
    wait_for(
        c, watcher, "a new operator pod",
        lambda: any(p["metadata"]["name"] != op_pod["metadata"]["name"] and p.get("status", {}).get("podIP") for p in operator.pods(c)),
    )  # fmt: skip

    final = wait_for_phase(c, ns, "quickstart", {"Succeeded", "Failed"}, watcher, timeout=2000)
    wall = time.monotonic() - t0
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    # Every stage ran once (one Job, one pod, even across the operator restart), in the trainer
    # image, on the real node, and exited 0.
    jobs = c.get(f"/apis/batch/v1/namespaces/{ns}/jobs") or {"items": []}
    per_stage = sorted(j["metadata"]["labels"].get("rlaif.dev/stage", "") for j in jobs["items"])
    assert per_stage == sorted(STAGES), [j["metadata"]["name"] for j in jobs["items"]]
    timings: dict[str, float] = {}
    for stage in STAGES:
        pods = watcher.by_stage(stage)
        assert [p.exit_code for p in pods] == [0], f"{stage}: {pods}"
        (pod,) = pods
        assert pod.node == NODE_NAME
        assert pod.image == c.node.loaded["trainer"].name  # type: ignore[union-attr]
        timings[stage] = seconds_between(pod.started, pod.finished)
        assert status["stages"][stage]["attempts"] == 1, status["stages"][stage]

    # status.results holds what the pods' termination messages said, key by key.
    results = status["results"]
    for stage, fields in RESULT_FIELDS.items():
        summary = watcher.summary(stage)
        for key, field in fields.items():
            assert key in summary, f"{stage} summary lacks {key}: {summary}"
            assert field in results, f"status.results lacks {field} ({stage}.{key}): {results}"
            assert math.isclose(results[field], summary[key], rel_tol=1e-6, abs_tol=1e-9), (stage, key)
    assert results["winRateCiLow"] <= results["winRateVsInitial"] <= results["winRateCiHigh"]

    # kubectl get rlaif -o wide: every column filled but QUEUE (this job names no Kueue queue) and STAGE-%
    # (no Kueue runs beside the real node; tests/integration/test_kueue_status.py covers it).
    table = c.kubectl("get", "rlaif", "-n", ns, "-o", "wide").stdout
    (row,) = printer_table(table)
    assert row.pop("QUEUE") == "", table  # kubectl prints an absent field as an empty cell
    assert row.pop("STAGE-%") == "", table  # the running stage's live progress: none once finished
    assert all(cell and cell != "<none>" for cell in row.values()), table
    assert row["PHASE"] == "Succeeded" and row["REASON"] == "AllStagesSucceeded", table
    assert row["ATTEMPT"] == "1" and row["MESSAGE"] == "all 4 stages succeeded", table

    # Events about the job, from the operator.
    events = c.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.kind%3DRLAIFJob") or {}
    reasons = [e["reason"] for e in events.get("items", [])]
    assert len(reasons) >= len(STAGES), reasons

    # The artifacts are on the volume, each stage's marked done.
    root = workspace / ns / "quickstart"
    for artifact in ("labels", "reward_model", "policy", "eval"):
        assert (root / artifact / "DONE").exists(), sorted(
            str(p.relative_to(workspace)) for p in root.rglob("*")
        )

    # Metrics: a stage pod's trainer port, scraped while it ran, and the operator's /metrics.
    scraped = [p for p in watcher.pods.values() if p.metrics]
    assert scraped and any("rlaif_trainer_" in (p.metrics or "") for p in scraped), watcher.pods
    (new_pod,) = operator.pods(c)
    assert new_pod["metadata"]["name"] != op_pod["metadata"]["name"]
    op_ip = new_pod["status"]["podIP"]
    op_metrics = scrape(f"http://{op_ip}:8080/metrics") or ""
    assert "rlaif_reconcile_total" in op_metrics

    report = {
        "wall_s": round(wall, 1),
        "stage_s": timings,
        "results": results,
        "events": sorted(set(reasons)),
    }
    print("\n[e2e] quickstart on the real node:", json.dumps(report))
    out = os.environ.get("RLAIF_E2E_REPORT")
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(report) + "\n")


def test_malformed_prompts_fail_the_job_at_once_without_retry(node_cluster: Cluster, setup) -> None:
    """A prompts file with a broken JSON line: the label stage exits 65 (bad input), and the job fails
    at once with the trainer's message, without a second attempt."""
    c = node_cluster
    _, namespaces = setup
    ns = namespaces["badprompts"]
    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    good = (workspace / "data" / "quickstart_prompts.jsonl").read_text().splitlines()
    put_file(
        workspace,
        "data/quickstart_prompts.jsonl",
        "\n".join([good[0], '{"id": "broken", "prompt": ', *good[1:]]) + "\n",
    )
    kubectl_apply_file(c, ns, fast_quickstart("badprompts", "workspace"))
    watcher = Watcher(c, ns)
    final = wait_for_phase(c, ns, "badprompts", {"Succeeded", "Failed"}, watcher, timeout=600)
    status = final["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    (pod,) = watcher.by_stage("label")
    assert pod.exit_code == 65, pod
    label = status["stages"]["label"]
    assert label["state"] == "Failed" and label["attempts"] == 1, label
    assert "quickstart_prompts.jsonl" in (label.get("message") or ""), label
    failed = [x for x in status["conditions"] if x["type"] == "Failed"]
    assert failed and failed[0]["status"] == "True", status["conditions"]
    time.sleep(10)  # no retry comes later either
    watcher.poll()
    assert len(watcher.by_stage("label")) == 1 and not watcher.by_stage("reward")


def _kill_container(c: Cluster, container_id: str) -> None:
    """SIGKILL the stage's container the way the OOM killer or a crash would (exit 137)."""
    assert c.node is not None
    c.node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id.removeprefix("containerd://"))


def test_killed_stage_pod_retries_and_resumes_from_its_checkpoint(node_cluster: Cluster, setup) -> None:
    """The rl stage's container is killed once its first checkpoint is on the volume: the operator
    retries the stage (attempt 2), which resumes from that checkpoint instead of step 0."""
    c = node_cluster
    _, namespaces = setup
    ns = namespaces["resume"]
    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    job = fast_quickstart("resume", "workspace", stages=["label", "reward", "rl"])
    job["spec"]["rl"].update({"steps": 4, "checkpointEvery": 1})
    kubectl_apply_file(c, ns, job)
    watcher = Watcher(c, ns)
    root = workspace / ns / "resume"
    wait_for(
        c, watcher, "an rl checkpoint on the volume", lambda: any(root.glob("**/checkpoints/step-*/state.pt"))
    )
    pod = c.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=rlaif.dev/stage%3Drl") or {"items": []}
    (rl_pod,) = [p for p in pod["items"] if p["status"].get("containerStatuses")]
    checkpoints = sorted(p.parent.name for p in root.glob("**/checkpoints/step-*/state.pt"))
    _kill_container(c, rl_pod["status"]["containerStatuses"][0]["containerID"])

    final = wait_for_phase(c, ns, "resume", {"Succeeded", "Failed"}, watcher, timeout=900)
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    attempts = watcher.by_stage("rl")
    assert [p.exit_code for p in attempts] == [137, 0], attempts
    assert status["stages"]["rl"]["attempts"] == 2, status["stages"]["rl"]
    resumed = watcher.summary("rl").get("resumed_from_step")
    assert resumed is not None and resumed >= 1, watcher.summary("rl")
    print(f"\n[e2e] rl killed with checkpoints {checkpoints}; attempt 2 resumed from step {resumed}")


def test_suspend_stops_the_real_pod_and_resume_continues(node_cluster: Cluster, setup) -> None:
    """runPolicy.suspend while the label pod runs: the pod goes, the job is Suspended; resuming
    starts the stage again and the job completes from its artifacts."""
    c = node_cluster
    _, namespaces = setup
    ns = namespaces["suspend"]
    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    kubectl_apply_file(c, ns, fast_quickstart("suspend", "workspace", stages=["label"]))
    watcher = Watcher(c, ns)
    wait_for(c, watcher, "a running label pod", lambda: any(p.running for p in watcher.by_stage("label")))
    patch = '{"spec": {"runPolicy": {"suspend": true}}}'
    c.kubectl("patch", "rlaif", "suspend", "-n", ns, "--type=merge", "-p", patch)
    wait_for_phase(c, ns, "suspend", {"Suspended"}, watcher, timeout=120)
    c.wait_for(
        "the label pod gone",
        lambda: not (c.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=rlaif.dev/stage") or {}).get("items"),
        timeout=120,
    )
    c.kubectl("patch", "rlaif", "suspend", "-n", ns, "--type=merge", "-p", patch.replace("true", "false"))
    final = wait_for_phase(c, ns, "suspend", {"Succeeded", "Failed"}, watcher, timeout=600)
    assert final["status"]["phase"] == "Succeeded", json.dumps(final["status"], indent=1)
    label = watcher.by_stage("label")
    assert len(label) == 2 and label[-1].exit_code == 0, label
    assert (workspace / ns / "suspend" / "labels" / "DONE").exists()


def _restricted_sleeper(
    name: str, image: str, queue: str, priority_class: str, memory: str
) -> dict[str, Any]:
    """A plain batch/v1 Job in ``queue`` that holds ``memory`` for a few seconds: the higher-priority
    workload that makes Kueue preempt a stage. Pod Security "restricted", placed on the real node."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "priorityClassName": priority_class,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": STAGE_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "sleep",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-c", "import time; time.sleep(8)"],
                            "resources": {"requests": {"memory": memory}, "limits": {"memory": memory}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    **REAL_NODE_PLACEMENT,
                }
            },
        },
    }


def _checkpoint_steps(root: Path) -> list[int]:
    return sorted(
        int(p.parent.name.removeprefix("step-")) for p in root.glob("**/checkpoints/step-*/state.pt")
    )


def test_a_preempted_rl_stage_resumes_from_its_checkpoint_when_readmitted(
    node_cluster: Cluster, setup
) -> None:
    """Real Kueue beside the real node: the rl stage (a checkpoint every step) runs in a LocalQueue
    whose memory quota fits one stage pod; once a checkpoint is on the volume a higher-priority Job
    enters the queue and Kueue preempts the stage (Job suspended, pod deleted). When the Job is
    readmitted the same attempt continues: the trainer's own summary and metrics.jsonl show that it
    resumed from the checkpointed step, and with backoffLimit 0 the job still succeeds, so the
    preemption was not counted as a failed attempt."""
    c = node_cluster
    _, namespaces = setup
    ns = namespaces["preempt"]
    kueue = Kueue(c).start()
    try:
        low, high = kueue.priority_class("rlaif-e2e-low", 100), kueue.priority_class("rlaif-e2e-high", 1000)
        queue = kueue.queue(ns, gpus=0, memory="4Gi")  # room for one 3Gi pod
        workspace = local_workspace(c, ns)
        stage_inputs(workspace)
        # rl alone, rewarded by the labeler (direct), so no label and reward stages come first.
        job = fast_quickstart("preempt", "workspace", stages=["rl"])
        job["spec"]["rl"].update({"steps": 6, "checkpointEvery": 1, "reward": "direct"})
        job["spec"]["runPolicy"] = {"queueName": queue, "priorityClassName": low, "backoffLimit": 0}
        kubectl_apply_file(c, ns, job)
        watcher = Watcher(c, ns)
        root = workspace / ns / "preempt"
        wait_for(c, watcher, "an rl checkpoint on the volume", lambda: bool(_checkpoint_steps(root)))
        checkpoints = _checkpoint_steps(root)
        image = c.node.loaded["operator"].name  # type: ignore[union-attr]
        c.request(
            "POST",
            f"/apis/batch/v1/namespaces/{ns}/jobs",
            _restricted_sleeper("urgent", image, queue, high, "3Gi"),
        )

        def preempted() -> bool:
            st = rlaifjob(c, ns, "preempt").get("status") or {}
            return st.get("phase") == "Queued" and any(
                x["type"] == "Queued" and x["reason"] == "Preempted" for x in st.get("conditions", [])
            )

        wait_for(c, watcher, "the rl stage preempted (Queued, Preempted)", preempted, timeout=120)
        at_preemption = _checkpoint_steps(root)
        final = wait_for_phase(c, ns, "preempt", {"Succeeded", "Failed"}, watcher, timeout=900)
        status = final["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        urgent = c.get(f"/apis/batch/v1/namespaces/{ns}/jobs/urgent") or {}
        assert (urgent.get("status") or {}).get("succeeded") == 1, urgent.get("status")
        rl = status["stages"]["rl"]
        assert rl["attempts"] == 1 and rl["jobName"] == "preempt-rl-1", rl  # the same attempt and Job
        pods = watcher.by_stage("rl")
        assert len(pods) == 2 and {p.attempt for p in pods} == {"1"}, pods  # one pod before, one after
        summary = watcher.summary("rl")
        resumed = summary.get("resumed_from_step")
        # From a checkpoint the first pod wrote (more of them while it ran out its grace period), not 0.
        assert resumed is not None and 6 > resumed >= max(checkpoints) >= 1, (
            summary,
            checkpoints,
            at_preemption,
        )
        # The trainer's per-step log: after the resume the steps continue from the checkpoint.
        lines = next(root.glob("**/metrics.jsonl")).read_text().splitlines()
        steps = [int(json.loads(x)["step"]) for x in lines if x.strip()]
        assert steps == list(range(1, 7)), steps  # each step once: cut back to the checkpoint, then on
        (after,) = [p for p in pods if p.exit_code == 0]
        logs = c.kubectl("logs", after.name, "-n", ns)
        log = logs.stdout + logs.stderr
        assert f"(step {resumed})" in log and "resumed from" in log, log[-2000:]
        got = [e["reason"] for e in (c.get(f"/api/v1/namespaces/{ns}/events") or {"items": []})["items"]]
        assert "Preempted" in got and "StageResumed" in got and "StageFailed" not in got, got
        print(
            f"\n[e2e] rl preempted (checkpoints {at_preemption} when the preemption showed); readmitted, "
            f"resumed from step {resumed}; "
            f"metrics.jsonl steps {steps}"
        )
    finally:
        kueue.delete_cluster_queues(ns)
        kueue.stop()


def test_two_operator_replicas_hand_over_without_duplicate_jobs(node_cluster: Cluster, setup) -> None:
    """The chart with replicaCount=2 and leaderElection.enabled: two operator pods, only the Lease
    holder reconciles; the holder pod is deleted while the label stage's pod runs, the standby takes
    the Lease, and the job ends with one Job and one pod per stage. Last in the module: it replaces
    the module's single operator (which watches every namespace) with the HA release."""
    c = node_cluster
    single, _ = setup
    helm(c, "uninstall", single.release, "--namespace", single.namespace, "--wait", "--timeout", "120s")
    ns = unique("ha")
    create_namespace(c, ns, PSS_RESTRICTED)
    timing = {"leaseDuration": 8, "renewDeadline": 5, "retryPeriod": 1}
    operator = install_operator(
        c,
        [ns],
        release="rlaif-ha",
        # The CRD stays from the uninstalled release (crds.keep), owned by it.
        extra_values={
            "replicaCount": 2,
            "leaderElection": {"enabled": True, **timing},
            "crds": {"install": False},
        },
    )
    pods = operator.pods(c)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{operator.namespace}/leases/{operator.fullname}"

    def holder() -> str:
        return str(((c.get(lease_path) or {}).get("spec") or {}).get("holderIdentity") or "")

    c.wait_for("a lease holder", lambda: holder() in {p["metadata"]["name"] for p in pods}, timeout=60)
    leader = holder()
    (standby,) = [p for p in pods if p["metadata"]["name"] != leader]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}

    def reconciles(pod_name: str) -> float:
        body = scrape(f"http://{ips[pod_name]}:8080/metrics") or ""
        return sum(
            float(line.rpartition(" ")[2])
            for line in body.splitlines()
            if line.startswith("rlaif_reconcile_total{")
        )

    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    kubectl_apply_file(c, ns, fast_quickstart("ha", "workspace", stages=["label", "reward"]))
    watcher = Watcher(c, ns)
    wait_for(
        c,
        watcher,
        "a running label pod",
        lambda: any(p.stage == "label" and p.running for p in watcher.pods.values()),
    )
    # Only the holder acts: it reconciled the job, the standby nothing.
    assert reconciles(leader) > 0
    assert reconciles(standby["metadata"]["name"]) == 0

    c.request("DELETE", f"/api/v1/namespaces/{operator.namespace}/pods/{leader}")
    deleted = time.monotonic()
    c.wait_for("the standby holds the lease", lambda: holder() == standby["metadata"]["name"], timeout=60)
    handover = time.monotonic() - deleted

    final = wait_for_phase(c, ns, "ha", {"Succeeded", "Failed"}, watcher, timeout=900)
    assert final["status"]["phase"] == "Succeeded", json.dumps(final["status"], indent=1)
    jobs = c.get(f"/apis/batch/v1/namespaces/{ns}/jobs") or {"items": []}
    assert sorted(j["metadata"]["labels"]["rlaif.dev/stage"] for j in jobs["items"]) == ["label", "reward"]
    for stage in ("label", "reward"):
        assert [p.exit_code for p in watcher.by_stage(stage)] == [0], watcher.by_stage(stage)
        assert final["status"]["stages"][stage]["attempts"] == 1
    assert reconciles(standby["metadata"]["name"]) > 0  # the former standby finished the job
    print(
        f"\n[e2e] HA: leader {leader} deleted mid-label; {standby['metadata']['name']} took the lease after {handover:.1f}s"
    )
