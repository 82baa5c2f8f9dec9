"""kstatus' Reconciling and Stalled conditions, decided in the pure core (no cluster).

kstatus (sigs.k8s.io/cli-utils/pkg/kstatus) reads these two abnormal-true conditions before anything
else: Reconciling=True is InProgress, Stalled=True is Failed, neither is decided by Ready. The real
library's verdict on objects the operator wrote is checked in tests/integration/test_kstatus.py and,
for the Argo CD / Flux fixtures, in tests/unit/test_argocd_health.py.
"""

from __future__ import annotations

import pytest

from rlaif_api import WAIT_REASONS, Reason
from rlaif_operator.conditions import conditions_for, health_of
from rlaif_operator.observe import Observed, PodInfo
from rlaif_operator.reconcile import reconcile
from rlaif_operator.settings import Settings
from rlaif_operator.timing import fmt_time

from .sim import T0, Sim, make_body
from .test_gate_reason import GATE_MESSAGE

FAILURES = (
    Reason.BAD_INPUT,
    Reason.REWARD_MODEL_BELOW_GATE,
    Reason.BACKOFF_LIMIT_EXCEEDED,
    Reason.DEADLINE_EXCEEDED,
    Reason.QUEUE_TIMEOUT_EXCEEDED,
    Reason.STAGE_JOB_INVALID,
)


def kstatus_pair(sim_or_status: Sim | dict) -> tuple[tuple[str, str], tuple[str, str]]:
    st = sim_or_status.status() if isinstance(sim_or_status, Sim) else sim_or_status
    by_type = {c["type"]: c for c in st["conditions"]}
    return (
        (by_type["Reconciling"]["status"], by_type["Reconciling"]["reason"]),
        (by_type["Stalled"]["status"], by_type["Stalled"]["reason"]),
    )


@pytest.mark.parametrize("reason", FAILURES)
def test_every_failure_is_stalled_not_reconciling(reason: Reason) -> None:
    assert health_of("Failed", reason) == "Failed"
    wanted = conditions_for("Failed", reason, "why")
    assert wanted["Stalled"] == (True, reason, "why") and wanted["Reconciling"] == (False, reason, "")


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("Pending", Reason.PENDING),
        ("Queued", Reason.WAITING_FOR_ADMISSION),
        ("Queued", Reason.PREEMPTED),
        ("Labeling", Reason.STAGE_RUNNING),
        ("OptimizingPolicy", Reason.BACKOFF_RETRY),
        *(("Pending", r) for r in sorted(WAIT_REASONS - {Reason.INVALID_SPEC})),
    ],
)
def test_waiting_queued_and_running_are_reconciling(phase: str, reason: Reason) -> None:
    assert health_of(phase, reason) == "InProgress"
    wanted = conditions_for(phase, reason, "what")
    assert wanted["Reconciling"] == (True, reason, "what") and wanted["Stalled"] == (False, reason, "")


def test_succeeded_and_suspended_are_neither() -> None:
    for phase, reason, health in (
        ("Succeeded", Reason.ALL_STAGES_SUCCEEDED, "Current"),
        ("Suspended", Reason.SUSPENDED, "Suspended"),
    ):
        assert health_of(phase, reason) == health
        wanted = conditions_for(phase, reason, "m")
        assert not wanted["Reconciling"][0] and not wanted["Stalled"][0]
        assert wanted["Ready"][0] is (phase == "Succeeded")  # what kstatus falls back to


def test_reasons_are_reason_enum_values() -> None:
    """Whatever the phase, both conditions carry a Reason (kstatus shows it), never a phase name."""
    sim = Sim(make_body(queueName="team-a"))
    sim.step()
    statuses = [sim.status()]
    sim.jobs["demo-label-1"]["spec"]["suspend"] = False
    sim.run_to_end()
    statuses.append(sim.status())
    values = {r.value for r in Reason}
    for st in statuses:
        for _, reason in kstatus_pair(st):
            assert reason in values


def test_a_lifecycle_through_the_core() -> None:
    """Queued, running, preempted, resumed, then failed: the pair follows each phase."""
    sim = Sim(make_body(queueName="team-a", backoffLimit=0))
    sim.step()
    assert kstatus_pair(sim) == (("True", "WaitingForAdmission"), ("False", "WaitingForAdmission"))
    assert "LocalQueue team-a" in sim.condition("Reconciling")["message"]
    sim.jobs["demo-label-1"]["spec"]["suspend"] = False
    sim.step()
    assert kstatus_pair(sim) == (("True", "StageRunning"), ("False", "StageRunning"))
    sim.jobs["demo-label-1"]["spec"]["suspend"] = True  # preempted by Kueue
    sim.step()
    assert kstatus_pair(sim) == (("True", "Preempted"), ("False", "Preempted"))
    sim.jobs["demo-label-1"]["spec"]["suspend"] = False
    sim.step()
    assert kstatus_pair(sim) == (("True", "StageRunning"), ("False", "StageRunning"))
    sim.advance(5)
    sim.finish("demo-label-1", 1, "boom")
    sim.step()
    assert sim.status()["phase"] == "Failed"
    assert kstatus_pair(sim) == (("False", "BackoffLimitExceeded"), ("True", "BackoffLimitExceeded"))
    assert "boom" in sim.condition("Stalled")["message"]
    assert all(c["observedGeneration"] == 1 for c in sim.status()["conditions"])


def test_the_reward_gate_and_a_refused_spec_are_stalled() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, {"stage": "label", "pairs": 50})
    sim.step()
    sim.finish("demo-reward-1", 65, GATE_MESSAGE)
    sim.step()
    assert kstatus_pair(sim)[1] == ("True", "RewardModelBelowGate")

    body = make_body()
    body["spec"]["stages"] = ["rl", "label"]
    invalid = Sim(body)
    invalid.step()
    assert invalid.status()["phase"] == "Pending"
    assert kstatus_pair(invalid) == (("False", "InvalidSpec"), ("True", "InvalidSpec"))


def test_stage_job_invalid_is_stalled() -> None:
    body = make_body()
    observed = Observed(claims=frozenset(), invalid={"demo-label-1": "Job.batch is invalid: Required value"})
    plan = reconcile(body, observed, T0, Settings(trainer_image="t"))
    assert plan.phase == "Failed" and plan.status is not None
    assert kstatus_pair(plan.status) == (("False", "StageJobInvalid"), ("True", "StageJobInvalid"))


def test_a_job_that_ended_without_the_pair_gains_it() -> None:
    """A job that failed under an operator that did not write Reconciling/Stalled yet gets them on the
    next pass, with the failure's reason; the other conditions keep their transition times."""
    sim = Sim(make_body(backoffLimit=0))
    sim.step()
    sim.advance(5)
    sim.finish("demo-label-1", 1, "boom")
    sim.step()
    old = [c for c in sim.status()["conditions"] if c["type"] not in ("Reconciling", "Stalled")]
    sim.body["status"]["conditions"] = old
    sim.advance(60)
    sim.pods["demo-label-1"] = PodInfo(name="p", job_name="demo-label-1", phase="Failed", exit_code=1)
    plan = sim.step()
    assert plan.status is not None and plan.events == []
    assert kstatus_pair(sim) == (("False", "BackoffLimitExceeded"), ("True", "BackoffLimitExceeded"))
    assert sim.condition("Stalled")["lastTransitionTime"] == fmt_time(sim.now)
    assert [c for c in sim.status()["conditions"] if c["type"] not in ("Reconciling", "Stalled")] == old
    assert sim.step().status is None  # and then it is settled
