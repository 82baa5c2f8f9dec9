"""The reconcile core through whole lifecycles, driven by the in-memory Sim (no cluster)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from rlaif_operator.observe import Observed, PodInfo
from rlaif_operator.reconcile import reconcile
from rlaif_operator.settings import Settings
from rlaif_operator.timing import fmt_time
from tests.unit.operator.sim import SPEC, T0, Sim, make_body

SUMMARIES = {
    "label": {"stage": "label", "pairs": 100, "consistency_rate": 0.81},
    "reward": {"stage": "reward", "accuracy": 0.74},
    "rl": {"stage": "rl", "final_reward": 0.5, "final_kl": 0.02},
    "evaluate": {
        "stage": "evaluate",
        "win_rate_vs_initial": 0.66,
        "win_rate_ci_low": 0.6,
        "win_rate_ci_high": 0.72,
    },
}


def test_first_reconcile_creates_label_job_configmap_and_pvc() -> None:
    sim = Sim()
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-1"]
    assert [o["kind"] for o in plan.ensure] == ["ConfigMap", "PersistentVolumeClaim"]
    st = sim.status()
    assert st["phase"] == "Labeling" and st["currentStage"] == "label" and st["progress"] == "0/4"
    assert st["startTime"] == fmt_time(T0)
    assert st["observedGeneration"] == 1
    assert sim.condition("Running")["status"] == "True"
    assert sim.condition("Ready")["status"] == "False"
    assert {c["type"] for c in st["conditions"]} == {
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
        "Ready",
        "Queued",
        "Reconciling",
        "Stalled",
    }
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])


def test_reconcile_is_idempotent() -> None:
    sim = Sim()
    sim.step()
    again = sim.step()  # observing the Job it just created changes nothing
    assert again.create == [] and again.delete == [] and again.status is None and again.events == []


def test_happy_path_through_four_stages_with_results() -> None:
    sim = Sim()
    sim.run_to_end(SUMMARIES)
    st = sim.status()
    assert st["phase"] == "Succeeded" and st["progress"] == "4/4"
    assert st["currentStage"] == "evaluate"  # the STAGE column stays filled once the job ended
    assert sim.condition("Succeeded")["status"] == "True"
    assert sim.condition("Ready")["status"] == "True"
    assert sim.condition("Running")["status"] == "False"
    assert st["stages"]["label"]["metrics"] == {"pairs": 100, "consistency_rate": 0.81}
    assert st["stages"]["rl"]["metrics"]["final_kl"] == 0.02
    assert st["results"] == {
        "winRateVsInitial": 0.66,
        "winRateCiLow": 0.6,
        "winRateCiHigh": 0.72,
        "labelerPositionConsistency": 0.81,
        "rewardModelAccuracy": 0.74,
        "finalReward": 0.5,
        "finalKl": 0.02,
    }
    assert st["completionTime"]
    assert sorted(sim.jobs) == ["demo-evaluate-1", "demo-label-1", "demo-reward-1", "demo-rl-1"]
    phases = [e for e in sim.events("PhaseChanged")]
    assert phases == [
        "PhaseChanged: phase Pending -> Labeling",
        "PhaseChanged: phase Labeling -> TrainingRewardModel",
        "PhaseChanged: phase TrainingRewardModel -> OptimizingPolicy",
        "PhaseChanged: phase OptimizingPolicy -> Evaluating",
        "PhaseChanged: phase Evaluating -> Succeeded: all 4 stages succeeded",
    ]
    assert len(sim.events("StageStarted")) == 4 and len(sim.events("StageSucceeded")) == 4
    outcomes = [(o.stage, o.result) for p in sim.plans for o in p.outcomes]
    assert outcomes == [(s, "succeeded") for s in ("label", "reward", "rl", "evaluate")]
    assert all(o.duration_seconds == 5 for p in sim.plans for o in p.outcomes)


def test_progress_and_phase_after_each_stage() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, SUMMARIES["label"])
    sim.step()
    st = sim.status()
    assert st["phase"] == "TrainingRewardModel" and st["progress"] == "1/4" and st["currentStage"] == "reward"
    assert st["stages"]["label"]["state"] == "Succeeded"
    assert st["stages"]["reward"]["state"] == "Running"
    assert st["results"] == {"labelerPositionConsistency": 0.81}


def test_pod_outcome_is_enough_before_the_job_condition_arrives() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, SUMMARIES["label"], pod_only=True)
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-reward-1"]


def test_last_transition_time_changes_only_on_flip() -> None:
    sim = Sim()
    sim.step()
    ltt = sim.condition("Running")["lastTransitionTime"]
    sim.advance(30)
    sim.finish("demo-label-1", 0, SUMMARIES["label"])
    sim.step()  # still running (reward), message changed but status did not flip
    assert sim.condition("Running")["lastTransitionTime"] == ltt
    assert "reward" in sim.condition("Running")["message"]
    assert sim.condition("Failed")["lastTransitionTime"] == ltt


def test_observed_generation_follows_metadata_generation() -> None:
    sim = Sim()
    sim.step()
    sim.body["metadata"]["generation"] = 2
    plan = sim.step()
    assert plan.status is not None and plan.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in plan.status["conditions"])
    assert plan.create == []


# -- retries -------------------------------------------------------------------------------------


def test_retry_after_backoff_then_success() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 1, {"stage": "label", "error": "CUDA OOM", "permanent": False})
    plan = sim.step()
    assert plan.create == []
    assert plan.requeue_after == pytest.approx(10)
    st = sim.status()["stages"]["label"]
    assert st["state"] == "Pending" and st["nextRetryTime"] == fmt_time(T0 + timedelta(seconds=10))
    assert "CUDA OOM" in st["message"]
    assert sim.status()["phase"] == "Labeling"
    assert sim.condition("Running")["reason"] == "BackoffRetry"
    assert any("retry 1/2" in e for e in sim.events("StageFailed"))
    sim.advance(9)
    assert sim.step().create == []
    sim.advance(1)
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-2"]
    assert sim.status()["stages"]["label"]["attempts"] == 2
    assert any("attempt 2 (retry)" in e for e in sim.events("StageStarted"))
    sim.finish("demo-label-2", 0, SUMMARIES["label"])
    sim.step()
    assert sim.status()["stages"]["label"]["state"] == "Succeeded"
    assert "demo-label-1" in sim.jobs  # the failed attempt is kept for its logs
    outcomes = [(o.stage, o.result) for p in sim.plans for o in p.outcomes]
    assert outcomes == [("label", "failed"), ("label", "succeeded")]


def test_second_retry_waits_twice_as_long() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 137)
    sim.step()
    sim.advance(10)
    sim.step()
    sim.finish("demo-label-2", 1)
    plan = sim.step()
    assert plan.requeue_after == pytest.approx(20)


def test_keeps_failing_until_backoff_limit_then_fails() -> None:
    sim = Sim(make_body(backoffLimit=1, backoffSeconds=1))
    sim.step()
    sim.finish("demo-label-1", 1, "Traceback...\nRuntimeError: boom")
    sim.step()
    sim.advance(1)
    sim.step()
    sim.finish("demo-label-2", 1, {"stage": "label", "error": "RuntimeError: boom", "permanent": False})
    plan = sim.step()
    assert plan.create == []
    st = sim.status()
    assert st["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "RuntimeError: boom" in failed["message"]
    assert st["stages"]["label"]["state"] == "Failed"
    assert sim.condition("Running")["status"] == "False"
    assert sim.condition("Ready")["reason"] == "BackoffLimitExceeded"
    assert sim.events("BackoffLimitExceeded")
    assert any("no retries left" in e for e in sim.events("StageFailed"))
    # terminal is sticky: more reconciles change nothing
    sim.advance(1000)
    again = sim.step()
    assert again.create == [] and again.status is None


def test_backoff_limit_zero_fails_on_first_failure() -> None:
    sim = Sim(make_body(backoffLimit=0))
    sim.step()
    sim.finish("demo-label-1", 2)
    sim.step()
    assert sim.status()["phase"] == "Failed"
    assert "exit code 2" in sim.condition("Failed")["message"]


def test_job_failed_without_pod_info_is_retryable() -> None:
    sim = Sim()
    sim.step()
    sim.jobs["demo-label-1"]["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "node lost",
                "lastTransitionTime": fmt_time(T0),
            }
        ]
    }
    sim.step()
    assert sim.status()["stages"]["label"]["nextRetryTime"]
    assert "node lost" in sim.status()["stages"]["label"]["message"]


def test_permanent_exit_code_fails_at_once() -> None:
    sim = Sim()
    sim.step()
    sim.finish(
        "demo-label-1",
        65,
        {"stage": "label", "error": "data/prompts.jsonl line 3: not JSON", "permanent": True},
    )
    plan = sim.step()
    assert plan.create == [] and plan.requeue_after is None
    assert sim.status()["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["reason"] == "BadInput"
    assert "data/prompts.jsonl line 3: not JSON" in failed["message"]
    assert sim.status()["stages"]["label"]["state"] == "Failed"
    assert any("not retrying" in e for e in sim.events("StageFailed"))
    assert len(sim.jobs) == 1


# -- deadline ------------------------------------------------------------------------------------


def test_active_deadline_fails_and_deletes_running_jobs() -> None:
    sim = Sim(make_body(activeDeadlineSeconds=60))
    plan = sim.step()
    assert plan.requeue_after == pytest.approx(60)
    sim.advance(59)
    assert sim.step().delete == []
    sim.advance(1)
    plan = sim.step()
    assert plan.delete == ["demo-label-1"]
    assert sim.status()["phase"] == "Failed"
    assert sim.condition("Failed")["reason"] == "DeadlineExceeded"
    assert sim.events("DeadlineExceeded")


def test_deadline_restarts_on_resume() -> None:
    sim = Sim(make_body(activeDeadlineSeconds=60))
    sim.step()
    sim.body["spec"]["runPolicy"]["suspend"] = True
    sim.step()
    sim.advance(3600)
    sim.body["spec"]["runPolicy"]["suspend"] = False
    sim.step()
    assert sim.status()["phase"] == "Labeling"
    assert sim.status()["startTime"] == fmt_time(sim.now)


# -- suspend / resume ----------------------------------------------------------------------------


def test_suspend_deletes_running_job_keeps_completed_stages_and_resume_continues() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, SUMMARIES["label"])
    sim.step()
    assert sim.active() == ["demo-reward-1"]
    sim.body["spec"]["runPolicy"]["suspend"] = True
    plan = sim.step()
    assert plan.delete == ["demo-reward-1"]
    assert plan.ensure  # artifacts (the PVC) are kept
    st = sim.status()
    assert st["phase"] == "Suspended" and st["currentStage"] == "reward"
    assert sim.condition("Suspended")["status"] == "True"
    assert sim.condition("Running")["status"] == "False"
    assert st["stages"]["label"]["state"] == "Succeeded"
    assert "demo-label-1" in sim.jobs
    assert sim.events("Suspended")
    assert sim.step().create == []  # stays suspended
    sim.body["spec"]["runPolicy"]["suspend"] = False
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-reward-2"]  # a fresh name, not reused
    assert sim.status()["phase"] == "TrainingRewardModel"
    assert sim.condition("Suspended")["status"] == "False"
    assert sim.events("Resumed")


def test_suspended_attempts_do_not_count_against_backoff_limit() -> None:
    sim = Sim(make_body(backoffLimit=0))
    for _ in range(3):
        sim.step()
        sim.body["spec"]["runPolicy"]["suspend"] = True
        sim.step()
        sim.body["spec"]["runPolicy"]["suspend"] = False
    sim.step()
    assert sim.status()["phase"] == "Labeling"
    assert sim.active() == ["demo-label-4"]


def test_suspend_before_start_creates_nothing() -> None:
    sim = Sim(make_body(suspend=True))
    plan = sim.step()
    assert plan.create == []
    assert sim.status()["phase"] == "Suspended"
    assert "startTime" not in sim.status()


# -- TTL -----------------------------------------------------------------------------------------


def test_ttl_deletes_finished_job_after_delay() -> None:
    sim = Sim(make_body(ttlSecondsAfterFinished=30))
    sim.run_to_end(SUMMARIES)
    assert sim.status()["phase"] == "Succeeded"
    assert sim.plans[-1].requeue_after == pytest.approx(30)
    assert not sim.deleted_self
    sim.advance(30)
    assert sim.step().delete_self


def test_ttl_applies_to_failed_jobs_too() -> None:
    sim = Sim(make_body(backoffLimit=0, ttlSecondsAfterFinished=0))
    sim.step()
    sim.finish("demo-label-1", 1)
    assert sim.step().delete_self


def test_no_ttl_keeps_finished_job() -> None:
    sim = Sim()
    sim.run_to_end(SUMMARIES)
    sim.advance(10**6)
    plan = sim.step()
    assert not plan.delete_self and plan.requeue_after is None


# -- skipping stages -----------------------------------------------------------------------------


def test_skipping_stages_starts_at_first_listed() -> None:
    spec = copy.deepcopy(SPEC)
    spec["stages"] = ["rl", "evaluate"]
    spec["rewardModel"] = {"path": "/models/rm"}
    sim = Sim(make_body(spec=spec))
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-rl-1"]
    st = sim.status()
    assert st["phase"] == "OptimizingPolicy" and st["progress"] == "0/2"
    assert st["stages"]["label"]["state"] == "Skipped" and st["stages"]["reward"]["state"] == "Skipped"
    sim.run_to_end(SUMMARIES)
    assert sim.status()["phase"] == "Succeeded" and sim.status()["progress"] == "2/2"
    assert sorted(sim.jobs) == ["demo-evaluate-1", "demo-rl-1"]


# -- restart safety ------------------------------------------------------------------------------


def test_restarted_operator_adopts_job_created_before_status_was_written() -> None:
    sim = Sim()
    sim.step()
    sim.body.pop("status")  # the operator died after creating the Job, before patching status
    plan = sim.step()
    assert plan.create == []  # adopted, not duplicated
    assert sim.status()["stages"]["label"]["jobName"] == "demo-label-1"
    assert sim.status()["stages"]["label"]["attempts"] == 1


def test_restart_after_stage_finished_and_status_lost_moves_on() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, SUMMARIES["label"])
    saved = copy.deepcopy(sim.body["status"])
    sim.step()  # created reward-1 and wrote status; pretend the status write was lost
    sim.body["status"] = saved
    plan = sim.step()
    assert plan.create == []
    assert sim.status()["currentStage"] == "reward"
    assert sim.status()["stages"]["label"]["metrics"] == {"pairs": 100, "consistency_rate": 0.81}


def test_attempt_numbers_come_from_children_and_status() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 1)
    sim.step()
    sim.body["status"]["stages"]["label"]["attempts"] = 5  # e.g. attempts 2-5 deleted by suspends
    sim.advance(10)
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-6"]


def test_jobs_owned_by_another_incarnation_are_ignored() -> None:
    sim = Sim()
    sim.step()
    sim.jobs["demo-label-1"]["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    sim.body["status"] = {}
    plan = reconcile(sim.body, sim.observed(), sim.now, sim.settings)
    # the old Job is not adopted; the executor's create gets 409 and waits for garbage collection
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-1"]


def test_finished_stage_is_sticky_even_if_its_job_is_deleted() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, SUMMARIES["label"])
    sim.step()
    del sim.jobs["demo-label-1"]
    plan = sim.step()
    assert plan.create == [] and sim.status()["stages"]["label"]["state"] == "Succeeded"


# -- waiting conditions --------------------------------------------------------------------------


def test_missing_claim_waits_with_a_clear_condition() -> None:
    spec = copy.deepcopy(SPEC)
    spec["storage"] = {"persistentVolumeClaim": {"claimName": "datasets"}}
    sim = Sim(make_body(spec=spec))
    plan = sim.step()
    assert plan.create == []
    assert plan.requeue_after == pytest.approx(30)
    assert sim.status()["phase"] == "Pending"
    running = sim.condition("Running")
    assert running["status"] == "False" and running["reason"] == "WorkspaceClaimNotFound"
    assert "datasets" in running["message"]
    assert sim.condition("Ready")["reason"] == "WorkspaceClaimNotFound"
    assert sim.events("WorkspaceClaimNotFound")
    assert [o["kind"] for o in plan.ensure] == ["ConfigMap"]  # no PVC created for a named claim
    again = sim.step()
    assert again.events == []  # the warning is posted once, not on every requeue
    sim.claims = frozenset({"datasets"})
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-1"]
    assert sim.condition("Running")["status"] == "True"


def test_no_trainer_image_waits() -> None:
    sim = Sim(settings=Settings())
    plan = sim.step()
    assert plan.create == [] and sim.condition("Running")["reason"] == "NoTrainerImage"


def test_invalid_spec_waits_and_does_not_raise() -> None:
    body = make_body()
    body["spec"]["stages"] = ["rl", "label"]
    sim = Sim(body)
    plan = sim.step()
    assert plan.create == []
    assert sim.status()["phase"] == "Pending"
    assert sim.condition("Running")["reason"] == "InvalidSpec"
    assert "stages" in sim.condition("Running")["message"]


def test_kueue_suspended_job_is_waiting_for_admission() -> None:
    sim = Sim(make_body(queueName="team-a"))
    sim.step()
    assert sim.jobs["demo-label-1"]["spec"]["suspend"] is True
    sim.step()
    assert sim.condition("Running")["reason"] == "WaitingForAdmission"
    sim.jobs["demo-label-1"]["spec"]["suspend"] = False  # Kueue admitted it
    sim.step()
    assert sim.condition("Running")["reason"] == "StageRunning"


def test_deleting_rlaifjob_plans_nothing() -> None:
    body = make_body()
    body["metadata"]["deletionTimestamp"] = fmt_time(T0)
    plan = reconcile(body, Observed(), T0, Settings(trainer_image="x"))
    assert plan.create == [] and plan.status is None and plan.ensure == []


# -- summaries of raw objects --------------------------------------------------------------------


def test_non_json_termination_message_becomes_the_error_text() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 1, "Killed")
    sim.step()
    assert "Killed" in sim.status()["stages"]["label"]["message"]


def test_status_is_valid_against_the_api_model() -> None:
    from rlaif_api import RLAIFJobStatus

    sim = Sim()
    sim.run_to_end(SUMMARIES)
    RLAIFJobStatus.model_validate(sim.status())


def test_a_stuck_stage_pod_is_reported_once_and_clears() -> None:
    sim = Sim()
    sim.step()
    (job,) = sim.active()
    sim.pods[job] = PodInfo(
        name=f"{job}-x", job_name=job, waiting='CreateContainerConfigError: secret "judge-key" not found'
    )
    sim.step()
    running = sim.condition("Running")
    assert (running["status"], running["reason"]) == ("False", "StagePodWaiting")
    assert 'secret "judge-key" not found' in running["message"] and f"{job}-x" in running["message"]
    assert sim.status()["phase"] == "Labeling"  # still this stage's phase: nothing failed
    sim.step()
    assert len(sim.events("StagePodWaiting")) == 1  # a Warning when it starts, not on every pass
    sim.pods[job] = PodInfo(name=f"{job}-x", job_name=job, phase="Running")
    sim.step()
    assert (sim.condition("Running")["status"], sim.condition("Running")["reason"]) == (
        "True",
        "StageRunning",
    )


def test_a_stage_job_without_a_pod_is_reported_after_a_grace_period() -> None:
    """A pods or GPU quota refuses the Job controller the pod: the Job exists and nothing runs."""
    from rlaif_operator.reconcile import POD_MISSING_SECONDS

    sim = Sim()
    sim.step()
    (job,) = sim.active()
    sim.jobs[job]["status"] = {"startTime": fmt_time(sim.now)}
    sim.advance(POD_MISSING_SECONDS - 1)
    sim.step()
    assert sim.condition("Running")["reason"] == "StageRunning"  # pods take a moment
    sim.advance(1)
    sim.step()
    running = sim.condition("Running")
    assert (running["status"], running["reason"]) == ("False", "StagePodWaiting")
    assert f"job {job} has created no pod" in running["message"] and "describe job" in running["message"]
    sim.step()
    assert len(sim.events("StagePodWaiting")) == 1
    sim.pods[job] = PodInfo(name=f"{job}-x", job_name=job, phase="Running")
    sim.step()
    assert sim.condition("Running")["reason"] == "StageRunning"


def test_the_pod_grace_period_counts_from_the_jobs_start_not_its_creation() -> None:
    """A Job that Kueue held for an hour gets its grace period from admission (status.startTime);
    one the Job controller has not started yet gets none."""
    sim = Sim()
    sim.step()
    (job,) = sim.active()
    sim.advance(3600)
    sim.step()
    assert sim.condition("Running")["reason"] == "StageRunning"
    sim.jobs[job]["status"] = {"startTime": fmt_time(sim.now)}
    sim.step()
    assert sim.condition("Running")["reason"] == "StageRunning"
