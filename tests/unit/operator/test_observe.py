"""Parsing stage Jobs and pods into what the reconcile core reads (rlaif_operator.observe)."""

from __future__ import annotations

from typing import Any

import pytest

from rlaif_operator.observe import summarize_job, summarize_pod
from rlaif_operator.timing import fmt_time
from tests.unit.operator.sim import Sim


def test_summarize_job_and_pod_from_api_objects() -> None:
    job = {
        "metadata": {
            "name": "demo-rl-3",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"rlaif.dev/stage": "rl", "rlaif.dev/attempt": "3"},
            "ownerReferences": [{"kind": "RLAIFJob", "uid": "u", "controller": True}],
        },
        "spec": {"suspend": False},
        "status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]},
    }
    info = summarize_job(job)
    assert info is not None and (info.stage, info.attempt, info.owner_uid, info.failed) == (
        "rl",
        3,
        "u",
        True,
    )
    assert summarize_job({"metadata": {"name": "x", "labels": {}}}) is None
    pod = {
        "metadata": {"name": "demo-rl-3-abc", "labels": {"batch.kubernetes.io/job-name": "demo-rl-3"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {"exitCode": 65, "message": '{"error": "bad"}', "finishedAt": "t"}
                    },
                }
            ],
        },
    }
    p = summarize_pod(pod)
    assert p is not None and (p.job_name, p.exit_code, p.message, p.phase) == (
        "demo-rl-3",
        65,
        '{"error": "bad"}',
        "Failed",
    )


def test_the_jobs_start_time_alone_queues_no_pass() -> None:
    """The Job controller's first status update (startTime) changes nothing a pass would act on."""
    sim = Sim()
    sim.step()
    (job,) = sim.active()
    before = summarize_job(sim.jobs[job])
    sim.jobs[job]["status"] = {"startTime": fmt_time(sim.now), "active": 1}
    after = summarize_job(sim.jobs[job])
    assert before is not None and after is not None and after.started == fmt_time(sim.now)
    assert after != before  # kopf's index keeps a value only when it compares unequal
    assert after.for_queueing() == before.for_queueing()


@pytest.mark.parametrize(
    ("status", "waiting"),
    [
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
                ],
            },
            None,
        ),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {
                            "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
                        },
                    }
                ],
            },
            "ImagePullBackOff: Back-off pulling image",
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                    }
                ],
            },
            "Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        ),
        ({"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}, None),
    ],
)
def test_summarize_pod_says_why_a_pod_is_stuck(status: dict[str, Any], waiting: str | None) -> None:
    pod = {
        "metadata": {"name": "demo-label-1-abc", "labels": {"batch.kubernetes.io/job-name": "demo-label-1"}},
        "status": status,
    }
    info = summarize_pod(pod)
    assert info is not None and info.waiting == waiting
