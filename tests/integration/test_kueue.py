"""RLAIFJobs through the real operator and real Kueue (tests/cluster/kueue.py) on kwok GPU nodes.

The operator's part of the contract: a stage Job is created with the queue-name label and
``suspend: true``; Kueue decides when it runs (admission unsuspends it) and may take it back
(preemption suspends it again and its pods are deleted). Every ClusterQueue here admits only its
test's namespace, and its ``nvidia.com/gpu`` quota (8) is smaller than the nodes' 16 GPUs, so
waiting is Kueue's doing, not the scheduler's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.cluster.kueue import API, QUEUE_LABEL, Kueue
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    crd_installed,
    create_job,
    operator,
    patch_job,
    pods_of,
    rlaif_job,
    stage_jobs,
    status,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures

LOW, HIGH = "rlaif-test-low", "rlaif-test-high"


@pytest.fixture
def queues(kueue: Kueue, namespace: str) -> Iterator[Kueue]:
    """``kueue``, and the ClusterQueues a test made for its namespace removed afterwards."""
    try:
        yield kueue
    finally:
        kueue.delete_cluster_queues(namespace)


def gpu_job(name: str, namespace: str, queue: str, gpus: int = 8, **kw: Any) -> dict[str, Any]:
    """A one-stage (label) RLAIFJob in ``queue`` whose stage pod asks for ``gpus`` GPUs."""
    manifest = rlaif_job(name, namespace, stages=kw.pop("stages", ["label"]), queueName=queue, **kw)
    manifest["spec"]["resources"] = {"default": {"gpus": gpus, "cpu": "1", "memory": "1Gi"}}
    return manifest


def gpu_queue(cluster: Cluster, namespace: str, queues: Kueue, *, priorities: bool = False) -> str:
    """What every test here starts from: the workspace claim bound and an 8-GPU LocalQueue for the
    namespace (and, with ``priorities``, the LOW and HIGH PriorityClasses); returns the queue."""
    bind_claim(cluster, namespace, "workspace")
    if priorities:
        queues.priority_class(LOW, 100)
        queues.priority_class(HIGH, 1000)
    return queues.queue(namespace, gpus=8)


def holding_the_quota(
    cluster: Cluster, namespace: str, queue: str, name: str, run_seconds: float, **kw: Any
) -> dict[str, Any]:
    """Job ``name`` admitted with the queue's whole 8-GPU quota; returns its running label pod."""
    create_job(cluster, gpu_job(name, namespace, queue, run_seconds=run_seconds, **kw))
    pod: dict[str, Any] = wait_until(
        f"{name} running", lambda: running_pod(cluster, namespace, f"{name}-label-1"), timeout=30
    )
    return pod


def workload_of(kueue: Kueue, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The Workload Kueue made for the batch/v1 Job ``job_name`` (owned by it)."""
    for wl in kueue.workloads(namespace):
        if any(
            o.get("kind") == "Job" and o.get("name") == job_name
            for o in wl["metadata"].get("ownerReferences", [])
        ):
            return wl
    return None


def wl_condition(wl: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next((c for c in (wl or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def finished_workload(kueue: Kueue, namespace: str, job_name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        wl = workload_of(kueue, namespace, job_name)
        return wl if wl_condition(wl, "Finished").get("status") == "True" else None

    return check


def batch_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = cluster.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    return result


def running_pod(cluster: Cluster, namespace: str, job_name: str) -> dict[str, Any] | None:
    return next(
        (p for p in pods_of(cluster, namespace, job_name) if p["status"].get("phase") == "Running"), None
    )


def assert_held(
    cluster: Cluster, kueue: Kueue, namespace: str, job_name: str, seconds: float
) -> dict[str, Any]:
    """For ``seconds``: the Job exists, stays suspended, has no pod, and its Workload has no quota."""
    deadline = time.monotonic() + seconds
    wl: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        job = batch_job(cluster, namespace, job_name)
        assert job is not None, f"stage Job {job_name} is gone"
        assert job["spec"].get("suspend") is True, f"{job_name} was unsuspended while the quota was used"
        assert not pods_of(cluster, namespace, job_name), f"{job_name} has pods while it waits"
        wl = workload_of(kueue, namespace, job_name)
        assert wl is not None and wl_condition(wl, "QuotaReserved").get("status") != "True"
        time.sleep(0.3)
    assert wl is not None
    return wl


def test_stage_jobs_are_created_suspended_in_the_queue_and_admitted_by_kueue(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues)
    create_job(cluster, gpu_job("admit", namespace, queue, gpus=2, stages=["label", "reward"]))
    st = wait_phase(cluster, namespace, "admit", "Succeeded", timeout=90)
    assert st["progress"] == "2/2"

    jobs = stage_jobs(cluster, namespace, "admit")
    assert sorted(j["metadata"]["name"] for j in jobs) == ["admit-label-1", "admit-reward-1"]
    for job in jobs:
        name = job["metadata"]["name"]
        assert job["metadata"]["labels"][QUEUE_LABEL] == queue
        assert job["spec"]["suspend"] is False  # Kueue admitted it
        # Who unsuspended it: Kueue's job reconciler, not the operator (which only creates Jobs).
        managers = {
            m["manager"]
            for m in job["metadata"].get("managedFields", [])
            if "f:suspend" in str(m.get("fieldsV1"))
        }
        assert "kueue" in " ".join(sorted(managers)), managers
        wl = wait_until(f"{name}'s Workload finished", finished_workload(queues, namespace, name), timeout=30)
        assert wl_condition(wl, "Admitted")["status"] == "True"
        assert wl["status"]["admission"]["clusterQueue"] == f"{namespace}-cq"
        assert wl["spec"]["queueName"] == queue
        assignment = wl["status"]["admission"]["podSetAssignments"][0]
        assert assignment["flavors"]["nvidia.com/gpu"] == "default-flavor"
        assert assignment["resourceUsage"]["nvidia.com/gpu"] in ("2", 2)


def test_a_job_waits_while_the_quota_is_used_then_runs(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues)
    holding_the_quota(cluster, namespace, queue, "first", run_seconds=6)

    create_job(cluster, gpu_job("second", namespace, queue))
    wait_until("second's stage Job", lambda: batch_job(cluster, namespace, "second-label-1"), timeout=30)
    wl = assert_held(cluster, queues, namespace, "second-label-1", 3.0)
    pending = wl_condition(wl, "QuotaReserved")
    assert pending.get("reason") == "Pending" and "nvidia.com/gpu" in pending.get("message", ""), pending

    wait_phase(cluster, namespace, "first", "Succeeded", timeout=60)
    wait_phase(cluster, namespace, "second", "Succeeded", timeout=60)
    first_done = pods_of(cluster, namespace, "first-label-1")
    second_pods = pods_of(cluster, namespace, "second-label-1")
    if first_done and second_pods:  # pods may already be garbage collected with their finished Jobs
        finished = first_done[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
        assert second_pods[0]["metadata"]["creationTimestamp"] >= finished
    second = workload_of(queues, namespace, "second-label-1")
    assert wl_condition(second, "Admitted")["status"] == "True"
    assert (
        wl_condition(second, "Admitted")["lastTransitionTime"]
        >= wl_condition(workload_of(queues, namespace, "first-label-1"), "Finished")["lastTransitionTime"]
    )


def test_two_queues_the_higher_priority_workload_is_admitted_first(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    bind_claim(cluster, namespace, "workspace")
    queues.priority_class(LOW, 100)
    queues.priority_class(HIGH, 1000)
    cq = f"{namespace}-cq"
    # No preemption here: the blocker must run to its end, so the order of the two waiting
    # workloads is Kueue's priority ordering across its two LocalQueues alone.
    team_a = queues.queue(
        namespace, "team-a", gpus=8, cluster_queue=cq, preemption={"withinClusterQueue": "Never"}
    )
    team_b = queues.queue(namespace, "team-b", cluster_queue=cq)
    create_job(cluster, gpu_job("blocker", namespace, team_a, run_seconds=5))
    wait_until("blocker running", lambda: running_pod(cluster, namespace, "blocker-label-1"), timeout=30)

    create_job(cluster, gpu_job("low", namespace, team_a, priorityClassName=LOW))
    wait_until("low's Workload", lambda: workload_of(queues, namespace, "low-label-1"), timeout=30)
    create_job(cluster, gpu_job("high", namespace, team_b, priorityClassName=HIGH))
    wait_until("high's Workload", lambda: workload_of(queues, namespace, "high-label-1"), timeout=30)
    assert workload_of(queues, namespace, "low-label-1")["spec"]["priority"] == 100  # type: ignore[index]
    assert workload_of(queues, namespace, "high-label-1")["spec"]["priority"] == 1000  # type: ignore[index]
    assert wl_condition(workload_of(queues, namespace, "blocker-label-1"), "Evicted").get("status") != "True"

    # the older, low-priority workload waits for the newer, high-priority one
    wait_until("high running", lambda: running_pod(cluster, namespace, "high-label-1"), timeout=60)
    low = batch_job(cluster, namespace, "low-label-1")
    assert (
        low is not None and low["spec"]["suspend"] is True and not pods_of(cluster, namespace, "low-label-1")
    )
    wait_phase(cluster, namespace, "high", "Succeeded", timeout=60)
    wait_phase(cluster, namespace, "low", "Succeeded", timeout=60)
    assert status(cluster, namespace, "blocker")["phase"] == "Succeeded"


def test_a_higher_priority_workload_preempts_a_running_stage_which_resumes_later(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues, priorities=True)  # withinClusterQueue: LowerPriority
    first_pod = holding_the_quota(cluster, namespace, queue, "low", run_seconds=8, priorityClassName=LOW)

    create_job(cluster, gpu_job("high", namespace, queue, run_seconds=1, priorityClassName=HIGH))
    # Kueue evicts low's workload: the Job is suspended again and its running pod deleted.
    wait_until(
        "low's Job suspended by Kueue",
        lambda: (j := batch_job(cluster, namespace, "low-label-1")) and j["spec"].get("suspend") is True,
        timeout=30,
    )
    wait_until(
        "low's preempted pod gone",
        lambda: all(
            p["metadata"]["uid"] != first_pod["metadata"]["uid"]
            for p in pods_of(cluster, namespace, "low-label-1")
        ),
        timeout=30,
    )
    wait_phase(cluster, namespace, "high", "Succeeded", timeout=60)

    # readmitted once high is done: the same Job runs again with a new pod, and finishes
    st = wait_phase(cluster, namespace, "low", "Succeeded", timeout=60)
    wl = workload_of(queues, namespace, "low-label-1")
    evictions = {
        e["reason"]: e["count"]
        for e in (wl or {}).get("status", {}).get("schedulingStats", {}).get("evictions", [])
    }
    assert evictions.get("Preempted", 0) >= 1, wl
    assert batch_job(cluster, namespace, "low-label-1") is not None
    print("low's label stage after preemption:", st["stages"]["label"])


def test_run_policy_suspend_alongside_kueues_own_suspension(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues)
    holding_the_quota(cluster, namespace, queue, "blocker", run_seconds=30)
    create_job(cluster, gpu_job("waiter", namespace, queue))
    wait_until("waiter's Workload", lambda: workload_of(queues, namespace, "waiter-label-1"), timeout=30)
    # Kueue's suspension is not the user's: the waiting job is not Suspended.
    assert status(cluster, namespace, "waiter").get("phase") != "Suspended"

    # The user suspends the waiting job: its Kueue-suspended stage Job goes, and so its Workload.
    patch_job(cluster, namespace, "waiter", {"spec": {"runPolicy": {"suspend": True}}})
    wait_phase(cluster, namespace, "waiter", "Suspended", timeout=30)
    wait_until(
        "waiter's stage Job deleted",
        lambda: batch_job(cluster, namespace, "waiter-label-1") is None,
        timeout=30,
    )
    wait_until(
        "waiter's Workload deleted",
        lambda: workload_of(queues, namespace, "waiter-label-1") is None,
        timeout=30,
    )

    # The user suspends the running job: its admitted Job goes and the quota is free again.
    patch_job(cluster, namespace, "blocker", {"spec": {"runPolicy": {"suspend": True}}})
    wait_phase(cluster, namespace, "blocker", "Suspended", timeout=30)
    wait_until(
        "blocker's Workload deleted",
        lambda: workload_of(queues, namespace, "blocker-label-1") is None,
        timeout=30,
    )

    # Resumed, the waiting job gets a new stage Job, again suspended until Kueue admits it; the
    # quota is free, so it is admitted and runs to the end.
    patch_job(cluster, namespace, "waiter", {"spec": {"runPolicy": {"suspend": False}}})
    wait_phase(cluster, namespace, "waiter", "Succeeded", timeout=60)
    resumed = [j for j in stage_jobs(cluster, namespace, "waiter")]
    assert len(resumed) == 1 and resumed[0]["metadata"]["labels"][QUEUE_LABEL] == queue
    wl = workload_of(queues, namespace, resumed[0]["metadata"]["name"])
    assert wl_condition(wl, "Admitted")["status"] == "True"

    patch_job(cluster, namespace, "blocker", {"spec": {"runPolicy": {"suspend": False}}})
    wait_until(
        "blocker running again",
        lambda: any(
            running_pod(cluster, namespace, j["metadata"]["name"])
            for j in stage_jobs(cluster, namespace, "blocker")
        ),
        timeout=60,
    )
    wait_until(  # Kueue's LocalQueue status counts it a moment later
        "the LocalQueue counts one admitted workload",
        lambda: (
            (
                (cluster.get(f"{API}/namespaces/{namespace}/localqueues/{queue}") or {}).get("status") or {}
            ).get("admittedWorkloads")
            == 1
        ),
        timeout=30,
    )
