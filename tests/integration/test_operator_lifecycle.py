"""The operator against the real control plane: lifecycle, results, events, metrics, retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif_operator.rbac import RBAC_RULES
from tests.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    bind_role,
    condition,
    crd_installed,
    create_job,
    events,
    get_job,
    job_names,
    operator,
    patch_job,
    pods_of,
    reasons,
    rlaif_job,
    service_account_kubeconfig,
    stage_jobs,
    status,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures


def test_happy_path_four_stages_with_results_events_and_metrics(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # Stage pods must pass the Pod Security "restricted" profile.
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("happy", namespace))
    st = wait_phase(cluster, namespace, "happy", "Succeeded", timeout=90)

    assert st["progress"] == "4/4"
    assert st["observedGeneration"] == 1
    for stage in ("label", "reward", "rl", "evaluate"):
        assert st["stages"][stage]["state"] == "Succeeded"
        assert st["stages"][stage]["attempts"] == 1
        assert st["stages"][stage]["metrics"]["win_rate_vs_initial"] == 0.68
    assert st["results"] == {
        "winRateVsInitial": 0.68,
        "labelerPositionConsistency": 0.9,
        "rewardModelAccuracy": 0.75,
        "finalReward": 0.4,
        "finalKl": 0.03,
    }
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "Succeeded")["status"] == "True"
    assert condition(st, "Running")["status"] == "False"
    assert job_names(cluster, namespace) == [
        "happy-evaluate-1",
        "happy-label-1",
        "happy-reward-1",
        "happy-rl-1",
    ]

    job = stage_jobs(cluster, namespace, "happy")[0]
    pod_spec = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pods_of(cluster, namespace, "happy-label-1"), "the restricted namespace admitted the stage pod"

    # printer columns
    out = cluster.kubectl("get", "rlaifjob", "happy", "-n", namespace).stdout
    assert "Succeeded" in out and "4/4" in out and "0.68" in out

    got = wait_until(
        "events", lambda: (r := reasons(cluster, namespace, "happy")).count("StageSucceeded") == 4 and r
    )
    assert got.count("StageStarted") == 4
    assert got.count("PhaseChanged") == 5
    assert any(e["message"].endswith("all 4 stages succeeded") for e in events(cluster, namespace, "happy"))

    assert operator.metric("rlaif_stage_attempts_total", stage="label", result="succeeded") == 1
    assert operator.metric("rlaif_stage_duration_seconds_count", stage="evaluate", result="succeeded") == 1
    assert operator.metric("rlaif_jobs", phase="Succeeded") == 1
    assert operator.metric("rlaif_reconcile_total", result="success") > 4
    assert operator.metric("rlaif_reconcile_duration_seconds_count") > 4
    assert "happy" not in operator.metrics()  # no per-job label values


def test_skipped_stages_start_at_the_first_listed(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    manifest = rlaif_job("skip", namespace, stages=["rl", "evaluate"])
    manifest["spec"]["rewardModel"] = {"path": "/workspace/models/rm"}
    create_job(cluster, manifest)
    st = wait_phase(cluster, namespace, "skip", "Succeeded")
    assert st["progress"] == "2/2"
    assert st["stages"]["label"]["state"] == "Skipped"
    assert job_names(cluster, namespace) == ["skip-evaluate-1", "skip-rl-1"]


def test_retry_once_then_succeed(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("retry", namespace, run_seconds=2))
    pod = wait_until("label pod", lambda: pods_of(cluster, namespace, "retry-label-1"), timeout=30)[0]
    # make only the first attempt fail: kwok reads the exit code from the pod when it finishes
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}",
        {"metadata": {"annotations": {"rlaif.dev/test-exit-code": "1"}}},
    )
    st = wait_phase(cluster, namespace, "retry", "Succeeded", timeout=90)
    assert st["stages"]["label"]["attempts"] == 2
    assert st["stages"]["reward"]["attempts"] == 1
    assert "retry-label-1" in job_names(cluster, namespace)  # the failed attempt is kept for its logs
    got = reasons(cluster, namespace, "retry")
    assert "StageFailed" in got
    assert operator.metric("rlaif_stage_attempts_total", stage="label", result="failed") == 1
    assert operator.metric("rlaif_stage_attempts_total", stage="label", result="succeeded") == 1


def test_keeps_failing_until_backoff_limit(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    message = {"stage": "label", "error": "CUDA error: out of memory", "permanent": False}
    create_job(cluster, rlaif_job("flaky", namespace, exit_code=1, message=message, backoffLimit=2))
    st = wait_phase(cluster, namespace, "flaky", "Failed", timeout=90)
    failed = condition(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "CUDA error: out of memory" in failed["message"]
    assert job_names(cluster, namespace) == ["flaky-label-1", "flaky-label-2", "flaky-label-3"]
    assert st["stages"]["label"]["state"] == "Failed"
    warn = wait_until(
        "failure event",
        lambda: [e for e in events(cluster, namespace, "flaky") if e["reason"] == "BackoffLimitExceeded"],
    )
    assert warn[0]["type"] == "Warning"
    assert reasons(cluster, namespace, "flaky").count("StageFailed") == 3


def test_permanent_exit_code_fails_at_once(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    message = {"stage": "label", "error": "data/prompts.jsonl line 7: not valid JSON", "permanent": True}
    create_job(cluster, rlaif_job("bad", namespace, exit_code=65, message=message, backoffLimit=3))
    st = wait_phase(cluster, namespace, "bad", "Failed")
    failed = condition(st, "Failed")
    assert failed["reason"] == "BadInput"
    assert "data/prompts.jsonl line 7: not valid JSON" in failed["message"]
    assert job_names(cluster, namespace) == ["bad-label-1"]
    assert st["stages"]["label"]["attempts"] == 1


def test_missing_claim_waits_with_a_condition_then_starts(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create_job(cluster, rlaif_job("waits", namespace, claim="later"))

    def waiting() -> dict | None:
        st = status(cluster, namespace, "waits")
        return st if condition(st, "Running").get("reason") == "WorkspaceClaimNotFound" else None

    st = wait_until("WorkspaceClaimNotFound", waiting, timeout=30)
    assert st["phase"] == "Pending"
    assert "later" in condition(st, "Ready")["message"]
    assert job_names(cluster, namespace) == []
    assert "WorkspaceClaimNotFound" in reasons(cluster, namespace, "waits")
    assert operator.alive()
    assert operator.metric("rlaif_reconcile_total", result="error") == 0
    bind_claim(cluster, namespace, "later")
    wait_phase(cluster, namespace, "waits", "Succeeded", timeout=90)


def test_operator_owned_workspace_claim(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    # no storage given: the operator creates <job>-workspace (20Gi); a PV waits for it
    bind_claim(cluster, namespace, "owned-workspace", create_claim=False)
    create_job(cluster, rlaif_job("owned", namespace, claim=None))
    wait_phase(cluster, namespace, "owned", "Succeeded", timeout=90)
    pvc = cluster.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/owned-workspace")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["metadata"]["ownerReferences"][0]["name"] == "owned"
    cm = cluster.get(f"/api/v1/namespaces/{namespace}/configmaps/owned-config")
    assert sorted(cm["data"]) == ["evaluate.json", "label.json", "reward.json", "rl.json"]


def test_concurrent_updates_lose_no_status(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, rlaif_job("busy", namespace, run_seconds=0.5))
    # another client keeps writing metadata and a mutable spec field while the operator works
    for i in range(40):
        patch_job(
            cluster,
            namespace,
            "busy",
            {
                "metadata": {"labels": {"touched": str(i)}},
                "spec": {"runPolicy": {"ttlSecondsAfterFinished": 3600 + i}},
            },
        )
        if status(cluster, namespace, "busy").get("phase") == "Succeeded":
            break
    st = wait_phase(cluster, namespace, "busy", "Succeeded", timeout=90)
    assert st["progress"] == "4/4"
    assert all(st["stages"][s]["state"] == "Succeeded" and st["stages"][s]["metrics"] for s in st["stages"])
    assert job_names(cluster, namespace) == ["busy-evaluate-1", "busy-label-1", "busy-reward-1", "busy-rl-1"]
    job = get_job(cluster, namespace, "busy")
    assert job is not None
    assert st["observedGeneration"] == job["metadata"]["generation"] or wait_until(
        "observedGeneration catches up",
        lambda: (
            status(cluster, namespace, "busy")["observedGeneration"]
            == (get_job(cluster, namespace, "busy") or {})["metadata"]["generation"]
        ),
        timeout=30,
    )


def test_runs_with_exactly_the_declared_rbac_rules(
    cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    """Least privilege: a ServiceAccount with only RBAC_RULES (namespaced) runs a job end to end,
    TTL deletion included. The Role is bound only after the operator starts, as when a GitOps
    tool applies the Deployment before the RoleBinding (or the authorizer's cache lags): its
    watches are refused at first and must heal by themselves."""
    kubeconfig = service_account_kubeconfig(
        cluster, namespace, RBAC_RULES, tmp_path / "sa.kubeconfig", bind=False
    )
    op = OperatorProcess(cluster, namespace, tmp_path, kubeconfig=kubeconfig)
    op.start()
    try:
        wait_until("the operator's watches are refused", lambda: "forbidden" in op.logs(), timeout=30)
        bind_role(cluster, namespace)
        bind_claim(cluster, namespace, "workspace")
        create_job(cluster, rlaif_job("rbac", namespace, ttlSecondsAfterFinished=1))
        st = wait_phase(cluster, namespace, "rbac", "Succeeded", timeout=90)
        assert st["progress"] == "4/4"
        assert "PhaseChanged" in reasons(cluster, namespace, "rbac")
        wait_until("TTL deletion", lambda: get_job(cluster, namespace, "rbac") is None, timeout=30)
        assert op.metric("rlaif_api_requests_total", method="POST", code="403") == 0
        assert op.metric("rlaif_api_requests_total", method="PATCH", code="403") == 0
    finally:
        op.stop()
        print(op.logs()[-5000:])
    assert "Traceback" not in op.logs(), op.logs()
