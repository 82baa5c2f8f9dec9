"""Kueue queueing in the pure core: queued is not running, preemption resumes, refused-as-invalid
stage Jobs fail fast, and events are named so that a repeated pass posts them once.

Kueue itself runs in tests/integration/test_kueue*.py; here the Sim plays its part by flipping the
stage Job's ``spec.suspend``.
"""

from __future__ import annotations

from rlaif_operator.observe import Observed, PodInfo
from rlaif_operator.reconcile import reconcile
from rlaif_operator.timing import fmt_time

from .sim import T0, Sim, make_body

JOB = "demo-label-1"


def queued_sim(**run_policy: object) -> Sim:
    sim = Sim(make_body(queueName="team-a", **run_policy))
    sim.step()
    return sim


def admit(sim: Sim, name: str = JOB) -> None:
    sim.jobs[name]["spec"]["suspend"] = False


def preempt(sim: Sim, name: str = JOB) -> None:
    sim.jobs[name]["spec"]["suspend"] = True
    sim.pods.pop(name, None)


def test_a_queued_stage_job_is_not_running() -> None:
    sim = queued_sim()
    assert sim.jobs[JOB]["spec"]["suspend"] is True
    for _ in range(2):  # at creation, and once the queued Job is observed
        st = sim.status()
        assert st["phase"] == "Queued"
        assert (sim.condition("Queued")["status"], sim.condition("Queued")["reason"]) == (
            "True",
            "WaitingForAdmission",
        )
        assert (
            "LocalQueue team-a" in sim.condition("Queued")["message"]
            and JOB in sim.condition("Queued")["message"]
        )
        assert (sim.condition("Running")["status"], sim.condition("Running")["reason"]) == (
            "False",
            "WaitingForAdmission",
        )
        assert st["stages"]["label"]["state"] == "Queued" and st["stages"]["label"]["attempts"] == 1
        assert "startTime" not in st and "startTime" not in st["stages"]["label"]
        sim.advance(5)
        sim.step()
    assert sim.events("StageStarted") == []


def test_stage_started_start_time_and_the_queue_wait_come_with_the_admission() -> None:
    sim = queued_sim()
    sim.advance(40)
    admit(sim)
    plan = sim.step()
    st = sim.status()
    assert st["phase"] == "Labeling" and st["startTime"] == fmt_time(sim.now)
    assert st["stages"]["label"]["startTime"] == fmt_time(sim.now)
    assert sim.condition("Queued")["status"] == "False" and sim.condition("Running")["status"] == "True"
    assert [e for e in sim.events("StageStarted")] == [
        f"StageStarted: started stage label attempt 1 (job {JOB})"
    ]
    assert plan.queue_waits == [("label", 40.0)]
    sim.advance(1)
    assert sim.step().queue_waits == [] and len(sim.events("StageStarted")) == 1


def test_the_deadline_counts_from_admission_not_from_creation() -> None:
    sim = queued_sim(activeDeadlineSeconds=10)
    sim.advance(60)  # six deadlines in the queue
    sim.step()
    assert sim.status()["phase"] == "Queued"
    admit(sim)
    sim.step()
    sim.advance(9)
    sim.step()
    assert sim.status()["phase"] == "Labeling"
    sim.advance(1)
    sim.step()
    assert sim.condition("Failed")["reason"] == "DeadlineExceeded"


def test_the_queue_timeout_fails_a_job_that_waits_too_long() -> None:
    sim = queued_sim(queueTimeoutSeconds=30)
    assert sim.plans[-1].requeue_after == 30
    sim.advance(29)
    sim.step()
    assert sim.status()["phase"] == "Queued"
    sim.advance(1)
    plan = sim.step()
    assert sim.status()["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["reason"] == "QueueTimeoutExceeded" and "queueTimeoutSeconds (30s)" in failed["message"]
    assert plan.delete == [JOB]


def test_a_preempted_attempt_is_queued_again_not_failed_and_resumes() -> None:
    sim = queued_sim(backoffLimit=0, activeDeadlineSeconds=100)
    admit(sim)
    sim.step()
    sim.advance(50)
    # Kueue evicts it; the kubelet stopped the pod on its way out (Failed): no failure of the attempt.
    sim.jobs[JOB]["spec"]["suspend"] = True
    sim.pods[JOB] = PodInfo(
        name="p", job_name=JOB, phase="Failed", exit_code=143, finished_at=fmt_time(sim.now)
    )
    sim.step()
    st = sim.status()
    assert st["phase"] == "Queued" and sim.condition("Queued")["reason"] == "Preempted"
    assert "preempted by Kueue" in sim.condition("Queued")["message"]
    assert st["stages"]["label"]["attempts"] == 1 and st["stages"]["label"]["state"] == "Queued"
    assert sim.events("StageFailed") == [] and len(sim.events("Preempted")) == 1
    sim.advance(200)  # queued time: neither the deadline nor a failure
    sim.step()
    assert sim.status()["phase"] == "Queued" and sim.condition("Queued")["reason"] == "Preempted"
    assert len(sim.events("Preempted")) == 1
    del sim.pods[JOB]
    admit(sim)
    plan = sim.step()
    st = sim.status()
    assert st["phase"] == "Labeling" and st["startTime"] == fmt_time(sim.now)  # the deadline restarts
    assert "again after a preemption" in st["stages"]["label"]["message"]
    assert len(sim.events("StageStarted")) == 1 and len(sim.events("StageResumed")) == 1
    assert plan.queue_waits == [("label", 200.0)]
    assert sim.active() == [JOB]
    sim.advance(5)
    sim.finish(JOB, 0, {"stage": "label"})
    sim.step()
    assert sim.status()["stages"]["label"]["state"] == "Succeeded"
    assert sim.status()["stages"]["label"]["attempts"] == 1


def test_a_stage_job_refused_as_invalid_fails_the_job_until_the_spec_changes() -> None:
    body = make_body()
    observed = Observed(
        claims=frozenset(), invalid={JOB: 'Job.batch "demo-label-1" is invalid: spec...: Required value'}
    )
    from rlaif_operator.settings import Settings

    settings = Settings(trainer_image="t")
    plan = reconcile(body, observed, T0, settings)
    assert plan.create == [] and plan.phase == "Failed"
    body["status"] = plan.status
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")  # type: ignore[index]
    assert failed["reason"] == "StageJobInvalid" and "Required value" in failed["message"]
    assert [e.reason for e in plan.events].count("StageJobInvalid") == 1
    # sticky for the same spec
    again = reconcile(body, Observed(claims=frozenset()), T0, settings)
    assert again.create == [] and again.phase == "Failed"
    # a changed spec is tried again
    body["metadata"]["generation"] = 2
    fixed = reconcile(body, Observed(claims=frozenset()), T0, settings)
    assert [m["metadata"]["name"] for m in fixed.create] == [JOB] and fixed.phase == "Labeling"
    assert "completionTime" not in (fixed.status or {})


def test_events_are_named_by_what_they_were_derived_from() -> None:
    sim = Sim()
    first = reconcile(sim.body, sim.observed(), T0, sim.settings)
    repeat = reconcile(sim.body, sim.observed(), T0, sim.settings)  # the same pass after a crash
    assert first.events and [e.key for e in first.events] == [e.key for e in repeat.events]
    assert len({e.key for e in first.events}) == len(first.events)
    sim.step()
    sim.advance(5)
    sim.finish(JOB, 0, {"stage": "label"})
    later = sim.step()
    assert not {e.key for e in later.events} & {e.key for e in first.events}


def test_a_preempted_pod_that_lingers_after_the_readmission_is_no_failure() -> None:
    """On a real node the preempted pod stays a while after Kueue readmitted its Job: deleted (by the
    Job controller, for the suspension) and Failed (SIGTERM). Found by the real-node e2e test: it
    was taken for the attempt's failure, and with backoffLimit 0 the job failed."""
    sim = queued_sim(backoffLimit=0)
    admit(sim)
    sim.step()
    sim.advance(30)
    preempt(sim)
    sim.step()
    assert sim.status()["phase"] == "Queued"
    sim.advance(10)
    admit(sim)
    sim.pods[JOB] = PodInfo(
        name="p1", job_name=JOB, phase="Failed", exit_code=143, finished_at=fmt_time(sim.now), deleted=True
    )
    sim.step()
    assert sim.status()["phase"] == "Labeling", sim.status()
    assert sim.events("StageFailed") == [] and len(sim.events("StageResumed")) == 1
    # A pod of the readmitted Job that fails on its own is the attempt's failure, as ever.
    sim.pods[JOB] = PodInfo(
        name="p2", job_name=JOB, phase="Failed", exit_code=1, finished_at=fmt_time(sim.now)
    )
    sim.step()
    assert sim.status()["phase"] == "Failed" and sim.condition("Failed")["reason"] == "BackoffLimitExceeded"


def test_a_stage_pod_is_replaced_only_once_it_stopped() -> None:
    """Readmitted after a preemption, the stage Job starts its new pod only once the old one is
    Failed (podReplacementPolicy), so two trainers never write the same workspace."""
    sim = queued_sim()
    assert sim.jobs[JOB]["spec"]["podReplacementPolicy"] == "Failed"
