"""What an RLAIFJob says while Kueue holds its stage Job, through the real operator and real Kueue.

Queued is not running: a stage Job that Kueue has not admitted (created suspended, or suspended
again by a preemption) puts the job in phase ``Queued`` with the condition ``Queued`` (reason
``WaitingForAdmission`` or ``Preempted``, the LocalQueue in the message); ``StageStarted`` is posted
on admission, ``activeDeadlineSeconds`` counts from admission, ``runPolicy.queueTimeoutSeconds``
bounds the wait, and the spec becomes immutable only at the first admission. A preempted attempt
is the same attempt when it is readmitted: not counted against ``backoffLimit``, the same Job,
config and workspace, so the trainer resumes from the checkpoints it wrote there (the stage
contract; kwok runs no trainer). The real kstatus library reads each of these objects as the
operator wrote them: queued, preempted and running are InProgress, failed is Failed, succeeded Current.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster import Cluster, kstatus
from tests.cluster.cluster import ClusterError
from tests.cluster.kueue import Kueue
from tests.integration.operator_support import (
    OperatorProcess,
    condition,
    crd_installed,
    create_job,
    events,
    get_job,
    operator,
    patch_job,
    pods_of,
    reasons,
    status,
    wait_phase,
    wait_until,
)
from tests.integration.test_kueue import (
    HIGH,
    LOW,
    batch_job,
    gpu_job,
    gpu_queue,
    holding_the_quota,
    queues,
    workload_of,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator", "queues"]  # fixtures


def queued(cluster: Cluster, namespace: str, name: str, reason: str = "WaitingForAdmission") -> Any:
    def check() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        q = condition(st, "Queued")
        return (
            st
            if st.get("phase") == "Queued" and q.get("status") == "True" and q.get("reason") == reason
            else None
        )

    try:
        return wait_until(f"{name} Queued ({reason})", check, timeout=30)
    except TimeoutError as err:
        raise TimeoutError(f"{err}; status now: {status(cluster, namespace, name)}") from None


def kstatus_of(cluster: Cluster, namespace: str, name: str) -> tuple[str, str]:
    """What the real kstatus library makes of the RLAIFJob as the operator wrote it: its status
    and the reason it names (of the operator's Reconciling/Stalled condition, or Ready's)."""
    verdict = kstatus.verdict(get_job(cluster, namespace, name) or {})
    return verdict["status"], next((c["reason"] for c in verdict["conditions"]), "")


def started_events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["message"] for e in events(cluster, namespace, name) if e["reason"] == "StageStarted"]


def test_a_queued_job_is_not_running_until_kueue_admits_it(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues)
    holding_the_quota(cluster, namespace, queue, "blocker", run_seconds=60)
    create_job(cluster, gpu_job("waiter", namespace, queue, run_seconds=60, activeDeadlineSeconds=4))

    st = queued(cluster, namespace, "waiter")
    q, running = condition(st, "Queued"), condition(st, "Running")
    assert queue in q["message"] and "waiter-label-1" in q["message"], q
    assert (running["status"], running["reason"]) == ("False", "WaitingForAdmission")
    assert condition(st, "Ready")["status"] == "False"
    assert st["currentStage"] == "label" and "startTime" not in st
    assert st["stages"]["label"]["state"] == "Queued"
    assert operator.metric("rlaif_jobs", phase="Queued") == 1
    assert kstatus_of(cluster, namespace, "waiter") == ("InProgress", "WaitingForAdmission")
    assert kstatus_of(cluster, namespace, "blocker") == ("InProgress", "StageRunning")
    header, row = cluster.kubectl(
        "get", "rlaif", "waiter", "-n", namespace, "-o", "wide"
    ).stdout.splitlines()[:2]
    assert header.split()[:10] == [
        "NAME",
        "PHASE",
        "STAGE",
        "PROGRESS",
        "STAGE-%",
        "WIN-RATE",
        "AGE",
        "REASON",
        "ATTEMPT",
        "QUEUE",
    ]
    assert row.split()[:2] == ["waiter", "Queued"] and "WaitingForAdmission" in row and " 1 " in row
    assert f" {queue} " in row and "waits for Kueue to admit it" in row

    time.sleep(5)  # longer than activeDeadlineSeconds: queueing time does not count
    st = status(cluster, namespace, "waiter")
    assert st["phase"] == "Queued", st
    assert not started_events(cluster, namespace, "waiter"), "StageStarted for a Job never admitted"
    assert reasons(cluster, namespace, "waiter").count("WaitingForAdmission") <= 1
    # Not started, so the spec may still change (immutability starts at admission).
    patch_job(cluster, namespace, "waiter", {"spec": {"seed": 7}})

    patch_job(cluster, namespace, "blocker", {"spec": {"runPolicy": {"suspend": True}}})  # frees the quota
    st = wait_phase(cluster, namespace, "waiter", "Labeling", timeout=30)
    assert condition(st, "Queued")["status"] == "False"
    assert condition(st, "Running")["status"] == "True"
    assert kstatus_of(cluster, namespace, "waiter") == ("InProgress", "StageRunning")
    # kstatus has no notion of suspension: Ready=False reads as InProgress (docs/gitops.md)
    assert kstatus_of(cluster, namespace, "blocker") == ("InProgress", "Suspended")
    admitted_at = st["startTime"]
    wait_until("one StageStarted", lambda: started_events(cluster, namespace, "waiter"), timeout=10)
    with pytest.raises(ClusterError, match="immutable"):
        patch_job(cluster, namespace, "waiter", {"spec": {"seed": 8}})

    # activeDeadlineSeconds (4 s) counts from the admission
    st = wait_phase(cluster, namespace, "waiter", "Failed", timeout=30)
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    assert kstatus_of(cluster, namespace, "waiter") == ("Failed", "DeadlineExceeded")
    assert st["completionTime"] >= admitted_at
    assert len(started_events(cluster, namespace, "waiter")) == 1
    assert operator.metric("rlaif_stage_queue_wait_seconds_count", stage="label") >= 2
    assert operator.metric("rlaif_stage_queue_wait_seconds_sum", stage="label") >= 5
    assert "waiter" not in operator.metrics()


def test_queue_timeout_fails_a_job_that_waits_too_long(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues)
    holding_the_quota(cluster, namespace, queue, "blocker", run_seconds=60)
    create_job(cluster, gpu_job("impatient", namespace, queue, queueTimeoutSeconds=3))
    queued(cluster, namespace, "impatient")
    st = wait_phase(cluster, namespace, "impatient", "Failed", timeout=30)
    failed = condition(st, "Failed")
    assert failed["reason"] == "QueueTimeoutExceeded" and "queueTimeoutSeconds" in failed["message"], failed
    assert kstatus_of(cluster, namespace, "impatient") == ("Failed", "QueueTimeoutExceeded")
    wait_until(
        "its queued Job deleted",
        lambda: batch_job(cluster, namespace, "impatient-label-1") is None,
        timeout=30,
    )
    assert status(cluster, namespace, "blocker")["phase"] == "Labeling"  # the running job is not affected


def test_a_preempted_stage_is_queued_again_and_resumes_as_the_same_attempt(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    queue = gpu_queue(cluster, namespace, queues, priorities=True)
    first = holding_the_quota(
        cluster, namespace, queue, "low", run_seconds=6, priorityClassName=LOW, backoffLimit=0
    )
    wait_phase(cluster, namespace, "low", "Labeling", timeout=30)

    create_job(cluster, gpu_job("high", namespace, queue, run_seconds=3, priorityClassName=HIGH))
    st = queued(cluster, namespace, "low", reason="Preempted")
    assert "low-label-1" in condition(st, "Queued")["message"]
    assert st["stages"]["label"]["attempts"] == 1
    assert "Preempted" in reasons(cluster, namespace, "low")
    assert kstatus_of(cluster, namespace, "low") == ("InProgress", "Preempted")
    wait_phase(cluster, namespace, "high", "Succeeded", timeout=60)
    assert kstatus_of(cluster, namespace, "high") == ("Current", "")

    wait_phase(cluster, namespace, "low", "Labeling", timeout=30)  # readmitted: resumed
    assert kstatus_of(cluster, namespace, "low") == ("InProgress", "StageRunning")
    st = wait_phase(cluster, namespace, "low", "Succeeded", timeout=60)
    assert kstatus_of(cluster, namespace, "low") == ("Current", "")
    # the same attempt, not a failure: backoffLimit 0 would have failed the job otherwise
    assert st["stages"]["label"]["attempts"] == 1 and st["stages"]["label"]["jobName"] == "low-label-1"
    got = reasons(cluster, namespace, "low")
    assert got.count("StageStarted") == 1 and got.count("StageResumed") == 1, got
    assert "StageFailed" not in got
    # The stage contract on resume: the same Job, so the same attempt number, config and workspace
    # paths; the trainer finds its checkpoints there.
    second = [
        p
        for p in pods_of(cluster, namespace, "low-label-1")
        if p["metadata"]["uid"] != first["metadata"]["uid"]
    ]
    if second:  # pods of a finished Job may already be gone
        env = {e["name"]: e.get("value") for e in second[0]["spec"]["containers"][0]["env"]}
        first_env = {e["name"]: e.get("value") for e in first["spec"]["containers"][0]["env"]}
        assert env["RLAIF_ATTEMPT"] == first_env["RLAIF_ATTEMPT"] == "1"
        assert second[0]["spec"]["volumes"] == first["spec"]["volumes"]
    wl = workload_of(queues, namespace, "low-label-1")
    assert wl is not None


def queue_wait_histogram(operator: OperatorProcess, stage: str) -> dict[str, float]:
    """rlaif_stage_queue_wait_seconds for ``stage``: cumulative bucket counts by ``le``, plus sum and count."""
    out: dict[str, float] = {}
    for line in operator.metrics().splitlines():
        if line.startswith("rlaif_stage_queue_wait_seconds") and f'stage="{stage}"' in line:
            key, _, value = line.rpartition(" ")
            le = (
                key.split('le="', 1)[1].split('"', 1)[0]
                if 'le="' in key
                else key.split("{", 1)[0].rsplit("_", 1)[1]
            )
            out[le] = float(value)
    return out


def test_a_saturated_queue_admits_one_job_at_a_time_and_records_each_wait(
    cluster: Cluster, namespace: str, operator: OperatorProcess, queues: Kueue
) -> None:
    """Six one-stage jobs that each take the whole quota (8 GPUs) for 2 s, created at once: Kueue
    admits them one after another, and the queue-wait histogram records waits of about 0, 2, 4, 6,
    8 and 10 s (BENCHMARKS.md quotes a run's values)."""
    queue = gpu_queue(cluster, namespace, queues)
    names = [f"sat-{i}" for i in range(6)]
    for name in names:
        create_job(cluster, gpu_job(name, namespace, queue, run_seconds=2))
    for name in names:
        wait_phase(cluster, namespace, name, "Succeeded", timeout=120)
    hist = wait_until(
        "six queue waits observed",
        lambda: (h := queue_wait_histogram(operator, "label")).get("count") == 6 and h,
        timeout=10,
    )
    print("queue wait histogram (label):", hist)
    # one admission at a time: the sum of the waits is at least 2+4+6+8+10 s less scheduling slack
    assert hist["sum"] >= 20, hist
    assert hist["+Inf"] == 6 and hist["1.0"] <= 2, hist  # at most the first one or two waited under 1 s
    starts = sorted(status(cluster, namespace, n)["startTime"] for n in names)
    assert starts[-1] > starts[0]
