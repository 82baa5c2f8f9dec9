"""Multi-node stages on the real control plane: the operator's JobSets run by the real JobSet
controller (tests/cluster/jobset.py, built from its pinned module), its Jobs by the real Job
controller, and their pods by kwok, each rank ending as its completion index's annotations say
(tests/cluster/stages.yaml).

kwok runs no containers: what is proven here is the objects (the JobSet, its Job, its headless
Service, the pods' hostnames and command) and how the operator reads and handles them; a real
reward stage across two pods is the real node's test (tests/e2e).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.cluster.jobset import API as JOBSET_API
from tests.cluster.jobset import JobSet
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    condition,
    crd_installed,
    create_job,
    events,
    operator,
    patch_job,
    rlaif_job,
    status,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures

RANK0 = {"stage": "reward", "accuracy": 0.83, "held_out_pairs": 50}


def _multi_node(
    name: str, namespace: str, nodes: int, annotations: dict[str, str], **run_policy: Any
) -> dict:
    manifest = rlaif_job(name, namespace, stages=["reward"], **run_policy)
    manifest["spec"]["dataset"]["labels"] = "data/labels.jsonl"
    manifest["spec"]["resources"] = {"default": {"gpus": 2}, "reward": {"nodes": nodes}}
    manifest["spec"]["podTemplate"]["annotations"].update(annotations)
    return manifest


def _jobsets(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (cluster.get(f"{JOBSET_API}/namespaces/{namespace}/jobsets") or {}).get(
        "items", []
    )
    return items


def _jobset_pods(cluster: Cluster, namespace: str, jobset: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        cluster.get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector=jobset.sigs.k8s.io/jobset-name%3D{jobset}"
        )
        or {}
    ).get("items", [])
    return items


def test_a_multi_node_stage_runs_as_a_jobset_and_reports_rank_zero(
    cluster: Cluster, namespace: str, jobset: JobSet, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    annotations = {
        "rlaif.dev/test-run-seconds-0": "2",  # rank 0 finishes last; the stage is done with it
        "rlaif.dev/test-run-seconds-1": "0.5",
        "rlaif.dev/test-termination-message-0": json.dumps(RANK0),
        "rlaif.dev/test-termination-message-1": json.dumps({"stage": "reward", "rank": 1}),
    }
    create_job(cluster, _multi_node("mn", namespace, 2, annotations))
    # the JobSet controller makes one Job of two indexed pods with stable hostnames, and its Service
    js = wait_until("the stage JobSet", lambda: next(iter(_jobsets(cluster, namespace)), None), timeout=30)
    name = js["metadata"]["name"]
    assert name == "mn-reward-1"
    assert js["metadata"]["labels"]["rlaif.dev/stage"] == "reward"
    assert js["metadata"]["ownerReferences"][0]["kind"] == "RLAIFJob"
    spec = js["spec"]
    assert spec["failurePolicy"]["maxRestarts"] == 0
    assert spec["successPolicy"]["operator"] == "All"
    assert (
        spec["network"]["enableDNSHostnames"] is True and spec["network"]["publishNotReadyAddresses"] is True
    )
    (rjob,) = spec["replicatedJobs"]
    child = rjob["template"]["spec"]
    assert (rjob["name"], rjob["replicas"], child["completions"], child["parallelism"]) == ("node", 1, 2, 2)
    assert (child["completionMode"], child["backoffLimit"]) == ("Indexed", 0)

    wait_until("both ranks' pods", lambda: len(_jobset_pods(cluster, namespace, name)) == 2)
    pods = _jobset_pods(cluster, namespace, name)
    by_rank = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_rank) == ["0", "1"]
    host0 = f"{name}-node-0-0.{name}"
    for rank, pod in by_rank.items():
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"{name}-node-0-{rank}", name)
        (c,) = pod["spec"]["containers"]
        env = {e["name"] for e in c["env"]}
        assert "JOB_COMPLETION_INDEX" in env  # the Job controller's; the command's rank comes from it
        command = c["command"]
        assert command[command.index("--machine_rank") + 1] == "$(JOB_COMPLETION_INDEX)"
        assert command[command.index("--main_process_ip") + 1] == host0
        assert command[command.index("--num_machines") + 1] == "2"
        assert command[command.index("--num_processes") + 1] == "4"  # 2 GPUs on each of 2 nodes
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    service = cluster.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    assert service is not None and service["spec"]["clusterIP"] == "None"  # headless: the rendezvous host

    st = wait_phase(cluster, namespace, "mn", "Succeeded", timeout=60)
    reward = st["stages"]["reward"]
    assert reward["state"] == "Succeeded" and reward["attempts"] == 1 and reward["jobName"] == name
    assert reward["metrics"] == {k: v for k, v in RANK0.items() if k != "stage"}  # rank 0's summary
    assert st["results"]["rewardModelAccuracy"] == 0.83
    done = cluster.get(f"{JOBSET_API}/namespaces/{namespace}/jobsets/{name}")
    assert done["status"]["terminalState"] == "Completed"


def test_a_failed_rank_fails_the_attempt_once_and_the_operator_retries(
    cluster: Cluster, namespace: str, jobset: JobSet, operator: OperatorProcess
) -> None:
    """Rank 1 of 3 dies in every attempt: each attempt counts once against backoffLimit, through
    the operator's own retries (the JobSet itself never restarts)."""
    bind_claim(cluster, namespace, "workspace")
    annotations = {
        "rlaif.dev/test-run-seconds": "20",  # ranks 0 and 2 would run on; the Job controller stops them
        "rlaif.dev/test-run-seconds-1": "0.5",
        "rlaif.dev/test-exit-code-1": "1",
        "rlaif.dev/test-termination-message-1": json.dumps(
            {"stage": "reward", "error": "rank 1 lost its GPU"}
        ),
    }
    create_job(cluster, _multi_node("mnfail", namespace, 3, annotations, backoffLimit=1))
    st = wait_phase(cluster, namespace, "mnfail", "Failed", timeout=90)
    reward = st["stages"]["reward"]
    assert reward["attempts"] == 2, reward
    assert "failed 2 times, more than backoffLimit 1" in reward["message"]
    assert "rank 1 lost its GPU" in reward["message"]
    assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded"
    names = sorted(j["metadata"]["name"] for j in _jobsets(cluster, namespace))
    assert names == ["mnfail-reward-1", "mnfail-reward-2"]
    # the JobSet controller marks each failed, without restarting it (maxRestarts 0)
    wait_until(
        "both JobSets Failed",
        lambda: all(
            (js.get("status") or {}).get("terminalState") == "Failed" for js in _jobsets(cluster, namespace)
        ),
        timeout=30,
    )
    assert all(js["status"].get("restarts", 0) == 0 for js in _jobsets(cluster, namespace))
    # one StageFailed per attempt (retry 1/1, then no retries left), not one per rank (3 x 2)
    stage_failed = sorted(
        e["message"] for e in events(cluster, namespace, "mnfail") if e["reason"] == "StageFailed"
    )
    assert len(stage_failed) == 2, stage_failed
    assert "attempt 1" in stage_failed[0] and "attempt 2" in stage_failed[1]


def test_suspend_deletes_the_jobset_and_resume_starts_the_next_attempt(
    cluster: Cluster, namespace: str, jobset: JobSet, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, _multi_node("mnsusp", namespace, 2, {"rlaif.dev/test-run-seconds": "60"}))
    wait_until(
        "both ranks running",
        lambda: (
            [
                p
                for p in _jobset_pods(cluster, namespace, "mnsusp-reward-1")
                if p["status"].get("phase") == "Running"
            ]
            if len(_jobset_pods(cluster, namespace, "mnsusp-reward-1")) == 2
            else None
        ),
        timeout=30,
    )
    patch_job(cluster, namespace, "mnsusp", {"spec": {"runPolicy": {"suspend": True}}})
    st = wait_phase(cluster, namespace, "mnsusp", "Suspended", timeout=30)
    assert condition(st, "Suspended")["status"] == "True"
    wait_until(
        "the JobSet and its pods gone",
        lambda: not _jobsets(cluster, namespace) and not _jobset_pods(cluster, namespace, "mnsusp-reward-1"),
        timeout=60,
    )
    patch_job(cluster, namespace, "mnsusp", {"spec": {"runPolicy": {"suspend": False}}})
    wait_until(
        "attempt 2's JobSet",
        lambda: [j["metadata"]["name"] for j in _jobsets(cluster, namespace)] == ["mnsusp-reward-2"],
        timeout=30,
    )
    st = wait_phase(cluster, namespace, "mnsusp", "TrainingRewardModel", timeout=30)
    assert st["stages"]["reward"]["jobName"] == "mnsusp-reward-2"


def test_deleting_the_rlaifjob_cascades_to_the_jobset_its_job_pods_and_service(
    cluster: Cluster, namespace: str, jobset: JobSet, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, _multi_node("mndel", namespace, 2, {"rlaif.dev/test-run-seconds": "60"}))
    name = "mndel-reward-1"
    wait_until("both ranks' pods", lambda: len(_jobset_pods(cluster, namespace, name)) == 2, timeout=30)
    assert cluster.get(f"/api/v1/namespaces/{namespace}/services/{name}") is not None
    cluster.request("DELETE", f"/apis/rlaif.dev/v1alpha1/namespaces/{namespace}/rlaifjobs/mndel")

    def gone() -> bool:
        jobs = (cluster.get(f"/apis/batch/v1/namespaces/{namespace}/jobs") or {}).get("items", [])
        return (
            not _jobsets(cluster, namespace)
            and not jobs
            and not _jobset_pods(cluster, namespace, name)
            and cluster.get(f"/api/v1/namespaces/{namespace}/services/{name}") is None
        )

    wait_until("the garbage collector to remove the JobSet and what it owns", gone, timeout=60)


def test_without_jobset_installed_a_multi_node_job_waits_with_a_condition_until_it_is(
    cluster: Cluster, namespace: str, jobset: JobSet, crd_installed: None, tmp_path
) -> None:
    """No JobSet CRD when the operator starts: a nodes > 1 job gets JobSetNotInstalled (condition
    and one Warning event), no crash; a single-node job beside it runs; once JobSet is installed
    and the operator restarted (it watches the resources it found at start-up), the job goes on."""
    jobset.stop()
    jobset.uninstall_crd()
    op = OperatorProcess(cluster, namespace, tmp_path)
    try:
        op.start()
        bind_claim(cluster, namespace, "workspace")
        create_job(cluster, _multi_node("nojs", namespace, 2, {}))
        single = rlaif_job("single", namespace, stages=["reward"])
        single["spec"]["dataset"]["labels"] = "data/labels.jsonl"
        create_job(cluster, single)

        def waiting() -> dict[str, Any] | None:
            st = status(cluster, namespace, "nojs")
            return st if condition(st, "Running").get("reason") == "JobSetNotInstalled" else None

        st = wait_until("JobSetNotInstalled", waiting, timeout=60)
        running = condition(st, "Running")
        assert running["status"] == "False"
        assert "resources.reward.nodes is 2" in running["message"]
        assert "jobset.x-k8s.io/v1alpha2" in running["message"]
        assert st["phase"] == "Pending"
        warned = [e for e in events(cluster, namespace, "nojs") if e["reason"] == "JobSetNotInstalled"]
        assert [e["type"] for e in warned] == ["Warning"]
        wait_phase(cluster, namespace, "single", "Succeeded", timeout=60)  # one node needs no JobSet
        assert op.alive()

        jobset.start()  # installs the CRD again and starts the controller
        op.stop()
        op.start()
        st = wait_phase(cluster, namespace, "nojs", "Succeeded", timeout=90)
        assert st["stages"]["reward"]["jobName"] == "nojs-reward-1"
        warned = [e for e in events(cluster, namespace, "nojs") if e["reason"] == "JobSetNotInstalled"]
        assert len(warned) == 1  # the wait was reported once, not once per retried create
    finally:
        op.stop()
        if not jobset.running:
            jobset.start()
    errors = [line for line in op.logs().splitlines() if "Traceback" in line]
    assert not errors, op.logs()
