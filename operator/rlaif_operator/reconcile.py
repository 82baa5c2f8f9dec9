"""The pure reconcile core: (RLAIFJob, the children it owns, now) -> Plan.

Level-triggered and restart-safe: the plan is recomputed from scratch from the RLAIFJob (spec and
its own status, which remembers finished stages and attempt numbers) and from the stage Jobs and
Pods it owns (attempt numbers come from their labels, outcomes from their status). A restarted
operator therefore computes the same plan as the one that died, and adopts the Jobs it finds
instead of creating duplicates. Nothing here does I/O or reads the clock.

Attempt accounting: stage Jobs run with ``backoffLimit: 0``; every attempt is its own Job named
``<job>-<stage>-<attempt>``. Failed attempts are kept (their pods hold the logs) and counted
against ``runPolicy.backoffLimit``; Jobs removed by suspend or a deadline are deleted and so do
not count. The next attempt number is one more than the highest seen in the children or in
``status.stages.<stage>.attempts``, so a name is never reused.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

import rlaif_api as api
from rlaif_api import (
    PHASE_OF_STAGE,
    RESULT_KEYS,
    STAGE_ORDER,
    WAIT_REASONS,
    Reason,
    RLAIFJob,
    RLAIFJobStatus,
    StageStatus,
)

from .builders import Owner, build_configmap, build_pvc, build_stage_job, stage_job_name, wants_pvc
from .conditions import (
    conditions_for,
    is_true,
    parse_status,
    set_conditions,
    stage_status,
)
from .events import diff_events
from .observe import Observed, StageView, attempt_of, stage_view, truncate
from .plan import Plan
from .settings import Settings
from .timing import backoff_delay, fmt_time, parse_time

TERMINAL_PHASES = ("Succeeded", "Failed")
# A running stage Job with no pod this long after it started: the Job controller is being refused
# the pod (a pods or GPU ResourceQuota, a missing ServiceAccount, an admission webhook). No timer
# is set for it: the next pass notices (at the latest the periodic resync), because a timer per
# stage start cost 2000 extra passes in the N = 500 benchmark for a condition that is rare.
POD_MISSING_SECONDS = 30.0


def permanent_reason(summary: dict[str, Any] | None) -> Reason:
    """The Failed reason of a stage that failed for good: the one its termination message names when
    it is a known reason (the reward model's quality gate, RewardModelBelowGate), else BadInput."""
    named = (summary or {}).get("reason")
    try:
        return Reason(named) if isinstance(named, str) else Reason.BAD_INPUT
    except ValueError:
        return Reason.BAD_INPUT


def reconcile(body: dict[str, Any], observed: Observed, now: datetime, settings: Settings) -> Plan:
    """Compute what should change for one RLAIFJob. ``body`` is the raw object from the API."""
    meta = body.get("metadata") or {}
    plan = Plan()
    if meta.get("deletionTimestamp"):
        return plan  # garbage collection removes the children
    owner = Owner(
        name=meta.get("name", ""), namespace=meta.get("namespace", "default"), uid=meta.get("uid", "")
    )
    generation = meta.get("generation")
    now_s = fmt_time(now)
    old = parse_status(body.get("status"))
    jobs = [j for j in observed.jobs if j.owner_uid == owner.uid]

    try:
        spec_json = json.dumps(body.get("spec") or {}, sort_keys=True)
        job = _parse_job(owner.name, owner.namespace, spec_json)
    except ValidationError as err:
        invalid = old.model_copy(deep=True)
        invalid.phase = "Pending"
        reason, message = (
            Reason.INVALID_SPEC,
            truncate(f"spec is invalid, fix it to start the job: {err}", 4096),
        )
        invalid.conditions = set_conditions(
            old.conditions, conditions_for("Pending", reason, message), now_s, generation
        )
        plan.phase = "Pending"
        diff_events(plan, old, invalid, {}, 0)
        return _finish(plan, body, old, invalid, now_s, generation)

    new = old.model_copy(deep=True)
    old_phase = old.phase or "Pending"

    # Terminal phases are sticky: children may be cleaned up, the verdict stays.
    if old_phase in TERMINAL_PHASES and is_true(old, old_phase):
        plan.delete.extend(
            j.name
            for j in jobs
            if not j.deleting and attempt_of(j, observed.pods.get(j.name, [])).outcome in ("active", "queued")
        )
        _ttl(plan, job, old, now)
        plan.phase = old_phase
        return _finish(plan, body, old, new, now_s, generation)

    listed = list(job.spec.stages)
    views: dict[str, StageView] = {}
    for stage in listed:
        views[stage] = stage_view(
            stage, [j for j in jobs if j.stage == stage], observed, stage_status(old, stage)
        )

    rp = job.spec.run_policy
    stages_status: dict[str, StageStatus] = {}
    for stage in STAGE_ORDER:  # type: ignore[assignment]
        if stage not in listed:
            stages_status[stage] = StageStatus(state="Skipped")
    done = 0
    current: str | None = None
    phase = "Pending"
    reason, message = Reason.PENDING, "waiting to start"
    failed_reason: Reason | None = None
    failed_message = ""
    results = (old.results or api.ResultsStatus()).model_copy(deep=True)

    for stage in listed:
        view = views[stage]
        prev = stage_status(old, stage)
        st = (prev or StageStatus()).model_copy(deep=True)
        st.attempts = view.highest
        st.next_retry_time = None
        if view.attempts:
            st.job_name = view.attempts[-1].job_name
            st.start_time = st.start_time or view.attempts[0].started
        if view.done:
            done += 1
            st.state = "Succeeded"
            if view.succeeded is not None and not view.sticky_success:
                st.completion_time = view.succeeded.finished or now_s
                st.job_name = view.succeeded.job_name
                st.message = f"attempt {view.succeeded.number} succeeded"
                if view.succeeded.summary is not None:
                    st.metrics = {k: v for k, v in view.succeeded.summary.items() if k != "stage"}
                    for key, target in RESULT_KEYS.get(stage, {}).items():
                        value = view.succeeded.summary.get(key)
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            setattr(results, target, float(value))
            stages_status[stage] = st
            continue
        if current is None:
            current = stage
        stages_status[stage] = st

    new.results = results if results.model_dump(exclude_none=True) else None
    new.progress = f"{done}/{len(listed)}"
    new.artifacts = _artifacts(job, settings)
    plan.ensure.extend(_ensure_objects(job, owner, settings, spec_json))

    if current is None:
        phase, reason, message = (
            "Succeeded",
            Reason.ALL_STAGES_SUCCEEDED,
            f"all {len(listed)} stages succeeded",
        )
        # The last stage that ran, so `kubectl get rlaif` shows where the job ended (no empty column).
        new.current_stage = listed[-1] if listed else None
        new.completion_time = new.completion_time or now_s
    else:
        new.current_stage = current  # type: ignore[assignment]
        view = views[current]
        st = stages_status[current]
        all_live = [a for v in views.values() for a in v.live]
        if old_phase == "Suspended" and not rp.suspend and new.start_time is not None:
            new.start_time = now_s  # like batch/v1 Jobs: the deadline timer restarts on resume
        deadline = _deadline(job, new, now)
        if view.permanent is not None:
            failed_reason = permanent_reason(view.permanent.summary)
            failed_message = f"stage {current} failed permanently (attempt {view.permanent.number}): {view.permanent.error}"
            st.completion_time = view.permanent.finished or now_s
        elif len(view.failures) > rp.backoff_limit:
            last = view.failures[-1]
            failed_reason = Reason.BACKOFF_LIMIT_EXCEEDED
            failed_message = f"stage {current} failed {len(view.failures)} times, more than backoffLimit {rp.backoff_limit}: {last.error}"
            st.completion_time = last.finished or now_s
        elif not rp.suspend and deadline is not None and now >= deadline:
            failed_reason = Reason.DEADLINE_EXCEEDED
            failed_message = f"the job ran longer than activeDeadlineSeconds ({rp.active_deadline_seconds}s)"
            st.completion_time = now_s
        if failed_reason is not None:
            st.state, st.message = "Failed", failed_message
            phase, reason, message = "Failed", failed_reason, failed_message
            new.completion_time = new.completion_time or now_s
            plan.delete.extend(a.job_name for a in all_live)
        elif rp.suspend:
            phase, reason = "Suspended", Reason.SUSPENDED
            message = f"suspended at stage {current}; completed stages and artifacts are kept"
            plan.delete.extend(a.job_name for a in all_live)
            st.state, st.message = "Pending", "suspended"
        else:
            phase = PHASE_OF_STAGE[current]
            reason, message = _advance(
                plan, job, owner, settings, observed, view, st, new, now, now_s, current
            )
            deadline = _deadline(job, new, now)  # the first attempt may just have set startTime
            if deadline is not None:
                plan.requeue((deadline - now).total_seconds())
            if reason in WAIT_REASONS and done == 0 and not view.attempts:
                phase = "Pending"

    new.phase = phase  # type: ignore[assignment]
    if phase in TERMINAL_PHASES:
        _ttl(plan, job, new, now)
    new.stages = api.StagesStatus(**stages_status)
    new.conditions = set_conditions(old.conditions, conditions_for(phase, reason, message), now_s, generation)
    plan.phase = phase
    diff_events(plan, old, new, views, rp.backoff_limit)
    return _finish(plan, body, old, new, now_s, generation)


def _advance(
    plan: Plan,
    job: RLAIFJob,
    owner: Owner,
    settings: Settings,
    observed: Observed,
    view: StageView,
    st: StageStatus,
    new: RLAIFJobStatus,
    now: datetime,
    now_s: str,
    stage: str,
) -> tuple[Reason, str]:
    """Run the current stage: watch the live attempt, wait out a backoff, or start the next attempt."""
    rp = job.spec.run_policy
    if view.live:
        live = view.live[-1]
        st.job_name = live.job_name
        if live.outcome == "queued":
            st.state, st.message = (
                "Pending",
                f"attempt {live.number} waiting for admission (job {live.job_name})",
            )
            return Reason.WAITING_FOR_ADMISSION, f"stage {stage}: {st.message}"
        st.state, st.message = "Running", f"attempt {live.number} running (job {live.job_name})"
        pods = observed.pods.get(live.job_name, [])
        stuck = next((p for p in reversed(pods) if p.waiting), None)
        if stuck is not None:
            return (
                Reason.STAGE_POD_WAITING,
                f"stage {stage} attempt {live.number}: pod {stuck.name} is not running: {stuck.waiting}",
            )
        job_started = parse_time(live.job_started)
        if (
            not pods
            and job_started is not None
            and (now - job_started).total_seconds() >= POD_MISSING_SECONDS
        ):
            return Reason.STAGE_POD_WAITING, (
                f"stage {stage} attempt {live.number}: job {live.job_name} has created no pod within "
                f"{POD_MISSING_SECONDS:.0f}s; the Job controller is likely refused it (a ResourceQuota, a missing "
                f"ServiceAccount, an admission webhook): see the FailedCreate events of `kubectl describe job "
                f"{live.job_name}`"
            )
        return Reason.STAGE_RUNNING, f"stage {stage} {st.message}"
    if view.failures:
        last = view.failures[-1]
        delay = backoff_delay(len(view.failures), rp.backoff_seconds, settings.max_backoff_seconds)
        failed_at = parse_time(last.finished) or now
        retry_at = failed_at + timedelta(seconds=delay)
        if now < retry_at:
            st.state = "Pending"
            st.next_retry_time = fmt_time(retry_at)
            st.message = f"attempt {last.number} failed: {last.error}; retrying at {st.next_retry_time}"
            plan.requeue((retry_at - now).total_seconds())
            return Reason.BACKOFF_RETRY, f"stage {stage} {st.message}"
    blocker = _blocker(job, owner, settings, observed)
    if blocker is not None:
        plan.requeue(settings.wait_requeue_seconds)
        st.state = "Pending"
        st.message = blocker[1]
        return blocker
    attempt = view.highest + 1
    job_name = stage_job_name(owner.name, stage, attempt)
    refusal = observed.refused.get(job_name)
    if refusal is not None:
        plan.requeue(refusal[1])
        st.state = "Pending"
        # Worded without the retry time, so that each retry leaves the status as it was.
        st.message = f"the API server refused stage Job {job_name}: {truncate(refusal[0])}"
        return (
            Reason.STAGE_JOB_REFUSED,
            f"stage {stage}: {st.message}; retrying with backoff, and at once when the spec changes",
        )
    image = job.spec.image or settings.trainer_image or ""
    plan.create.append(build_stage_job(job, owner, stage, attempt, settings, image))
    st.state = "Running"
    st.job_name = job_name
    st.attempts = attempt
    st.start_time = st.start_time or now_s
    # worded as the next pass will see it, so observing the new Job needs no second status write
    st.message = f"attempt {attempt} running (job {st.job_name})"
    new.start_time = new.start_time or now_s
    return Reason.STAGE_RUNNING, f"stage {stage} {st.message}"


def _blocker(
    job: RLAIFJob, owner: Owner, settings: Settings, observed: Observed
) -> tuple[Reason, str] | None:
    """Why a new stage Job cannot be created yet, if anything: the job waits, it does not fail."""
    if not (job.spec.image or settings.trainer_image):
        return Reason.NO_TRAINER_IMAGE, "no trainer image: set spec.image or the operator's --trainer-image"
    claim = job.spec.storage.persistent_volume_claim
    if claim is not None and observed.claims is not None and claim.claim_name not in observed.claims:
        return (
            Reason.WORKSPACE_CLAIM_NOT_FOUND,
            f"PersistentVolumeClaim {claim.claim_name!r} (spec.storage.persistentVolumeClaim) does not exist in "
            f"namespace {owner.namespace}; the job starts when it does",
        )
    return None


@lru_cache(maxsize=4096)
def _parse_job(name: str, namespace: str, spec_json: str) -> RLAIFJob:
    """Validation is the costliest step of a pass and the spec rarely changes: memoized (read-only)."""
    return RLAIFJob.model_validate(
        {"spec": json.loads(spec_json), "metadata": {"name": name, "namespace": namespace}}
    )


@lru_cache(maxsize=4096)
def _configmap(owner: Owner, spec_json: str, workspace_root: str) -> dict[str, Any]:
    job = _parse_job(owner.name, owner.namespace, spec_json)
    return build_configmap(job, owner, Settings(workspace_root=workspace_root))


def _ensure_objects(job: RLAIFJob, owner: Owner, settings: Settings, spec_json: str) -> list[dict[str, Any]]:
    objs = [_configmap(owner, spec_json, settings.workspace_root)]
    if wants_pvc(job):
        pvc = build_pvc(job, owner)
        if pvc is not None:
            objs.append(pvc)
    return objs


def _artifacts(job: RLAIFJob, settings: Settings) -> api.ArtifactsStatus:
    ws = api.job_workspace(settings.workspace_root, job.metadata.namespace, job.metadata.name)
    return api.ArtifactsStatus(
        labels=str(ws / api.ARTIFACT_DIRS["labels"]),
        reward_model=str(ws / api.ARTIFACT_DIRS["reward_model"]),
        policy=str(ws / api.ARTIFACT_DIRS["policy"]),
        report=str(ws / api.ARTIFACT_DIRS["eval"]),
    )


def _deadline(job: RLAIFJob, status: RLAIFJobStatus, now: datetime) -> datetime | None:
    seconds = job.spec.run_policy.active_deadline_seconds
    start = parse_time(status.start_time)
    if seconds is None or start is None:
        return None
    return start + timedelta(seconds=seconds)


def _ttl(plan: Plan, job: RLAIFJob, status: RLAIFJobStatus, now: datetime) -> None:
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    finished = parse_time(status.completion_time)
    if ttl is None or finished is None:
        return
    expires = finished + timedelta(seconds=ttl)
    if now >= expires:
        plan.delete_self = True
    else:
        plan.requeue((expires - now).total_seconds())


def _finish(
    plan: Plan,
    body: dict[str, Any],
    old: RLAIFJobStatus,
    new: RLAIFJobStatus,
    now_s: str,
    generation: int | None,
) -> Plan:
    new.observed_generation = generation
    for cond in new.conditions:
        cond.observed_generation = generation
    wire = new.to_wire()
    if wire != (body.get("status") or {}):
        plan.status = wire
    return plan
