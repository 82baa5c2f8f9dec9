"""Fault tolerance of the operator against the real control plane: restarts, suspend/resume,
deadline, TTL, deletion cascade, and the API server going away."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    condition,
    crd_installed,
    create_job,
    events,
    get_job,
    job_names,
    operator,
    patch_job,
    reasons,
    rlaif_job,
    stage_jobs,
    status,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures
STAGES = ("label", "reward", "rl", "evaluate")


def messages(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["message"] for e in events(cluster, namespace, name)]


def duplicates(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Events posted more than once (same reason and message; an Event's count > 1 counts too)."""
    seen: Counter[str] = Counter()
    for e in events(cluster, namespace, name):
        seen[f"{e['reason']}: {e['message']}"] += e.get("count") or 1
    return [text for text, n in seen.items() if n > 1]


def test_operator_killed_in_every_stage_neither_duplicates_nor_loses_transitions(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("crash", namespace, run_seconds=2.5))
    for stage in STAGES:
        wait_until(
            f"{stage} Job", lambda s=stage: f"crash-{s}-1" in job_names(cluster, namespace), timeout=60
        )
        operator.kill()  # SIGKILL mid-stage: the pod keeps running (and may finish) meanwhile
        time.sleep(0.5)
        operator.start()
    st = wait_phase(cluster, namespace, "crash", "Succeeded", timeout=90)
    assert job_names(cluster, namespace) == [f"crash-{s}-1" for s in sorted(STAGES)]
    assert all(st["stages"][s]["attempts"] == 1 and st["stages"][s]["metrics"] for s in STAGES)
    assert st["results"]["winRateVsInitial"] == 0.68
    # every transition was announced (at least once: a kill between an event and the status
    # write that records it re-posts the event rather than losing it)
    for stage in STAGES:
        for what in ("started stage {s} attempt 1", "stage {s} attempt 1 succeeded"):
            text = what.format(s=stage)
            wait_until(
                text,
                lambda t=text: any(m.startswith(t) for m in messages(cluster, namespace, "crash")),
                timeout=30,
            )
    assert operator.starts == 5
    assert duplicates(cluster, namespace, "crash") == []


def test_suspend_then_resume_continues_from_the_current_stage(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("pause", namespace, run_seconds=3))
    wait_until("reward Job", lambda: "pause-reward-1" in job_names(cluster, namespace), timeout=60)
    patch_job(cluster, namespace, "pause", {"spec": {"runPolicy": {"suspend": True}}})
    st = wait_phase(cluster, namespace, "pause", "Suspended", timeout=30)
    assert condition(st, "Suspended")["status"] == "True"
    assert condition(st, "Running")["status"] == "False"
    assert st["currentStage"] == "reward"
    assert st["stages"]["label"]["state"] == "Succeeded"
    wait_until(
        "reward Job deleted", lambda: "pause-reward-1" not in job_names(cluster, namespace), timeout=30
    )
    assert "pause-label-1" in job_names(cluster, namespace)  # completed stages are kept
    assert cluster.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/workspace") is not None
    time.sleep(1)
    assert status(cluster, namespace, "pause")["phase"] == "Suspended"  # and it stays suspended

    patch_job(cluster, namespace, "pause", {"spec": {"runPolicy": {"suspend": False}}})
    st = wait_phase(cluster, namespace, "pause", "Succeeded", timeout=90)
    names = job_names(cluster, namespace)
    assert "pause-reward-2" in names and "pause-label-2" not in names
    assert st["stages"]["reward"]["attempts"] == 2
    got = reasons(cluster, namespace, "pause")
    assert "Suspended" in got and "Resumed" in got


def test_active_deadline_fails_with_deadline_exceeded(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("slow", namespace, run_seconds=60, activeDeadlineSeconds=3))
    st = wait_phase(cluster, namespace, "slow", "Failed", timeout=30)
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    wait_until("running stage Job deleted", lambda: job_names(cluster, namespace) == [], timeout=30)
    assert "DeadlineExceeded" in reasons(cluster, namespace, "slow")


def test_ttl_deletes_the_finished_job_and_gc_removes_children(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("short", namespace, ttlSecondsAfterFinished=2))
    wait_phase(cluster, namespace, "short", "Succeeded", timeout=90)
    wait_until("RLAIFJob deleted by TTL", lambda: get_job(cluster, namespace, "short") is None, timeout=30)
    wait_until("stage Jobs garbage-collected", lambda: job_names(cluster, namespace) == [], timeout=60)


def test_deleting_the_rlaifjob_cascades_to_its_children(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "gone-workspace", create_claim=False)
    create_job(cluster, rlaif_job("gone", namespace, run_seconds=30, claim=None))
    wait_until("label Job", lambda: job_names(cluster, namespace) == ["gone-label-1"], timeout=60)
    assert cluster.get(f"/api/v1/namespaces/{namespace}/configmaps/gone-config") is not None
    cluster.request("DELETE", f"/apis/rlaif.dev/v1alpha1/namespaces/{namespace}/rlaifjobs/gone")
    wait_until("Jobs deleted", lambda: job_names(cluster, namespace) == [], timeout=60)
    wait_until(
        "ConfigMap deleted",
        lambda: cluster.get(f"/api/v1/namespaces/{namespace}/configmaps/gone-config") is None,
        timeout=60,
    )

    def claim_gone() -> bool:
        pvc = cluster.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/gone-workspace")
        return pvc is None or bool(pvc["metadata"].get("deletionTimestamp"))

    wait_until("owned PVC deleted", claim_gone, timeout=60)


def test_api_server_restart_during_a_run(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("outage", namespace, run_seconds=2))
    wait_until("label Job", lambda: "outage-label-1" in job_names(cluster, namespace), timeout=60)
    pid = operator.pid
    cluster.stop_apiserver()
    try:
        time.sleep(6)  # the label pod's end and the operator's writes all hit a dead API server
        assert operator.alive()
    finally:
        cluster.start_apiserver()
    st = wait_phase(cluster, namespace, "outage", "Succeeded", timeout=150)
    assert operator.pid == pid and operator.alive() and operator.starts == 1
    assert st["progress"] == "4/4"
    assert len(stage_jobs(cluster, namespace, "outage")) == 4
    # kopf's retries of its watch streams: one warning while the server is away, one line when it
    # is back, no ERROR per retry
    log = (operator.log_dir / "operator-1.log").read_text()
    kopf_lines = [line for line in log.splitlines() if "kopf._cogs.clients" in line]
    assert not [line for line in kopf_lines if "ERROR" in line], kopf_lines
    assert sum("the API server is unreachable" in line for line in kopf_lines) == 1, kopf_lines
    assert sum("the API server is reachable again" in line for line in kopf_lines) == 1, kopf_lines


def test_api_server_restarts_post_each_transition_once(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Three API-server restarts across the stages: writes and event posts fail or lose their
    answers, passes are repeated, and still every transition is announced exactly once.

    Why each stage may take long after a restart (diagnosed with the operator at debug level and the
    components' logs): the operator reacts to the child events within milliseconds, but a freshly
    started kube-apiserver answers 403 until its RBAC authorizer's caches are warm, so the
    controller-manager's and the scheduler's reflectors (and the Job controller's rate-limited
    queue) back off; the Job controller then creates the stage pod only once its pod informer has
    caught up ("read version ... is not as new as written version"). That took 9-24 s per restart
    on an idle machine and more under load, hence the 180 s (the Job controller's 60 s cap, twice,
    plus the reflectors' 30 s) per stage."""
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("restarts", namespace, run_seconds=2))
    for stage in STAGES[:3]:
        wait_until(
            f"{stage} Job", lambda s=stage: f"restarts-{s}-1" in job_names(cluster, namespace), timeout=180
        )
        cluster.stop_apiserver(graceful=False)  # a crash: in-flight requests get no answer
        try:
            time.sleep(2.5)  # the stage pod ends meanwhile; the operator's writes hit a dead server
        finally:
            cluster.start_apiserver()
    wait_phase(cluster, namespace, "restarts", "Succeeded", timeout=150)
    for stage in STAGES:
        wait_until(
            f"{stage}'s events",
            lambda s=stage: any(
                m.startswith(f"stage {s} attempt 1 succeeded")
                for m in messages(cluster, namespace, "restarts")
            ),
            timeout=30,
        )
    assert operator.starts == 1 and operator.alive()
    assert duplicates(cluster, namespace, "restarts") == []


def test_a_stage_pod_that_cannot_be_scheduled_is_reported(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """16 GPUs on nodes that have 8: the real scheduler marks the pod Unschedulable, and the job
    says so in its Running condition and in one Warning event instead of looking busy."""
    bind_claim(cluster, namespace, "workspace")
    manifest = rlaif_job("greedy", namespace)
    manifest["spec"]["resources"] = {"label": {"gpus": 16}}
    create_job(cluster, manifest)

    def waiting() -> dict[str, Any] | None:
        running = condition(status(cluster, namespace, "greedy"), "Running")
        # the scheduler's first verdict may still be about the claim its cache has not seen yet
        stuck = running.get("reason") == "StagePodWaiting" and "nvidia.com/gpu" in running.get("message", "")
        return running if stuck else None

    running = wait_until("Running condition says the pod is stuck for GPUs", waiting, timeout=90)
    assert running["status"] == "False" and "Unschedulable" in running["message"]
    assert status(cluster, namespace, "greedy")["phase"] == "Labeling"
    warnings = [e for e in events(cluster, namespace, "greedy") if e["reason"] == "StagePodWaiting"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"


def start_under_quota(cluster: Cluster, namespace: str, job: str, quota: str, hard: dict[str, str]) -> None:
    """Create the RLAIFJob ``job`` in a namespace whose ResourceQuota ``quota`` allows only ``hard``."""
    manifest = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": quota, "namespace": namespace},
        "spec": {"hard": hard},
    }
    cluster.apply(manifest)
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job(job, namespace))


def test_a_stage_job_the_api_server_refuses_is_reported_then_created_once_allowed(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A ResourceQuota that allows no Jobs: quota admission refuses the stage Job (HTTP 403). The
    job says why in its Running condition and one Warning event, announces no stage that never
    started, and creates the Job on a later retry once the quota allows it."""
    start_under_quota(cluster, namespace, "refused", "no-jobs", {"count/jobs.batch": "0"})

    def refused() -> dict[str, Any] | None:
        running = condition(status(cluster, namespace, "refused"), "Running")
        return running if running.get("reason") == "StageJobRefused" else None

    running = wait_until("Running condition says the stage Job was refused", refused, timeout=60)
    assert running["status"] == "False" and "refused-label-1" in running["message"]
    assert "quota" in running["message"]
    assert status(cluster, namespace, "refused")["phase"] == "Pending"
    assert job_names(cluster, namespace) == []
    time.sleep(7)  # at least one retry (5 s backoff) is refused too
    found = reasons(cluster, namespace, "refused")
    assert found.count("StageJobRefused") == 1 and "StageStarted" not in found
    assert operator.alive() and operator.metric("rlaif_reconcile_total", result="error") == 0

    cluster.kubectl("delete", "resourcequota", "no-jobs", "-n", namespace)
    wait_phase(cluster, namespace, "refused", "Succeeded", timeout=120)
    assert job_names(cluster, namespace, "refused") == sorted(f"refused-{stage}-1" for stage in STAGES)


def test_a_stage_job_that_gets_no_pod_is_reported(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A ResourceQuota that allows no pods: the stage Job exists but the Job controller is refused
    its pod. After the grace period the job says so instead of claiming to run."""
    start_under_quota(cluster, namespace, "podless", "no-pods", {"pods": "0"})

    def no_pod() -> dict[str, Any] | None:
        running = condition(status(cluster, namespace, "podless"), "Running")
        return running if "has created no pod" in running.get("message", "") else None

    # 30 s of grace, then the next pass: at the latest the operator's 60 s resync
    running = wait_until("Running condition says the Job has no pod", no_pod, timeout=150)
    assert (running["status"], running["reason"]) == ("False", "StagePodWaiting")
    assert job_names(cluster, namespace, "podless") == ["podless-label-1"]
    assert status(cluster, namespace, "podless")["phase"] == "Labeling"
    assert reasons(cluster, namespace, "podless").count("StagePodWaiting") == 1
