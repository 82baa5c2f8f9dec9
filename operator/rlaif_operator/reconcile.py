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

import dataclasses
import hashlib
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

from .builders import (
    JOBSET_API_VERSION,
    Owner,
    build_configmap,
    build_pvc,
    build_stage_child,
    stage_child_name,
    stage_nodes,
    wants_pvc,
)
from .conditions import (
    condition,
    conditions_for,
    is_true,
    parse_status,
    set_conditions,
    stage_status,
)
from .events import diff_events
from .labeler_server import ServerStep, server_step
from .observe import Observed, StageView, attempt_of, stage_view, truncate
from .plan import EventSpec, Plan
from .progress import finished, next_progress
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
    if _invalid_job_fixed(old, generation):
        old_phase, new.completion_time = "Pending", None

    # Terminal phases are sticky: children may be cleaned up, the verdict stays. One exception: a
    # stage Job the API server refused as invalid is tried again once the spec has changed.
    if old_phase in TERMINAL_PHASES and is_true(old, old_phase) and not _invalid_job_fixed(old, generation):
        plan.delete.extend(
            j.name
            for j in jobs
            if not j.deleting and attempt_of(j, observed.pods.get(j.name, [])).outcome in ("active", "queued")
        )
        _ttl(plan, job, old, now)
        plan.phase = old_phase
        server = _server(plan, job, owner, settings, observed, old, None, False, now)
        # Recomputed from the verdict: the same conditions for a job that has them all, and kstatus'
        # Reconciling/Stalled for one that ended under an operator that did not write them yet.
        verdict = condition(old, old_phase)
        if verdict is not None:
            new.conditions = set_conditions(
                old.conditions, conditions_for(old_phase, verdict.reason, verdict.message), now_s, generation
            )
        _server_condition(plan, old, new, server, now_s, generation)
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
            # A stage starts when its first attempt runs: at its Job's creation, or with a queue at
            # the admission (the Job controller's startTime; the pass that sees it may come first).
            ran = next((a for a in view.attempts if a.outcome != "queued"), None)
            if ran is not None:
                st.start_time = st.start_time or (ran.job_started if _queue(job, settings) else ran.started)
        if view.done:
            done += 1
            st.state = "Succeeded"
            if view.succeeded is not None and not view.sticky_success:
                st.completion_time = view.succeeded.finished or now_s
                st.job_name = view.succeeded.job_name
                st.message = f"attempt {view.succeeded.number} succeeded"
                st.progress = finished(st.progress, now_s)
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
        # Time in a Kueue queue is not running time: no deadline while the stage Job waits, and
        # runPolicy.queueTimeoutSeconds bounds the wait instead.
        live = view.live[-1] if view.live else None
        queued = live is not None and live.outcome == "queued"
        before = stage_status(old, current)
        readmitted = (
            live is not None
            and not queued
            and _queue_reason(old) == Reason.PREEMPTED
            and before is not None
            and before.job_name == live.job_name
        )
        if readmitted:
            new.start_time = now_s  # like a resume: activeDeadlineSeconds counts from the readmission
        deadline = None if queued else _deadline(job, new, now)
        queued_since = _queued_since(old, now) if queued else None
        queue_deadline = (
            queued_since + timedelta(seconds=rp.queue_timeout_seconds)
            if queued_since is not None and rp.queue_timeout_seconds is not None
            else None
        )
        server = _server(plan, job, owner, settings, observed, old, current, not rp.suspend, now)
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
        elif not rp.suspend and queue_deadline is not None and now >= queue_deadline:
            failed_reason = Reason.QUEUE_TIMEOUT_EXCEEDED
            failed_message = (
                f"stage {current} job {view.live[-1].job_name} waited in Kueue LocalQueue "
                f"{_queue(job, settings)} longer than runPolicy.queueTimeoutSeconds ({rp.queue_timeout_seconds}s)"
            )
            st.completion_time = now_s
        elif (
            not rp.suspend
            and not view.live
            and server.blocks is not None
            and server.blocks[0] == Reason.LABELER_SERVER_NOT_READY
        ):
            failed_reason, failed_message = server.blocks
            st.completion_time = now_s
        if failed_reason is not None or rp.suspend:
            server = _server(plan, job, owner, settings, observed, old, current, False, now)
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
                plan, job, owner, settings, observed, view, st, new, now, now_s, current, server.blocks
            )
            if reason in (Reason.WAITING_FOR_ADMISSION, Reason.PREEMPTED):
                phase = "Queued"
                if queue_deadline is None and rp.queue_timeout_seconds is not None:
                    queue_deadline = now + timedelta(seconds=rp.queue_timeout_seconds)  # queued just now
                if queue_deadline is not None:
                    plan.requeue((queue_deadline - now).total_seconds())
            elif reason == Reason.STAGE_JOB_INVALID:
                phase, st.completion_time = "Failed", now_s
                new.completion_time = new.completion_time or now_s
            else:
                deadline = _deadline(job, new, now)  # the admission may just have set startTime
                if deadline is not None:
                    plan.requeue((deadline - now).total_seconds())
            if reason in WAIT_REASONS and done == 0 and not view.attempts:
                phase = "Pending"

    new.phase = phase  # type: ignore[assignment]
    if phase in TERMINAL_PHASES:
        _ttl(plan, job, new, now)
    new.stages = api.StagesStatus(**stages_status)
    shown = stages_status.get(new.current_stage) if new.current_stage else None
    new.current_attempt = shown.attempts if shown is not None and shown.attempts else None
    running = shown is not None and shown.state == "Running" and shown.progress is not None
    new.progress_percentage = shown.progress.progress_percentage if running else None  # type: ignore[union-attr]
    new.conditions = set_conditions(old.conditions, conditions_for(phase, reason, message), now_s, generation)
    if current is None:  # every stage succeeded: nothing asks the labeler any more
        server = _server(plan, job, owner, settings, observed, old, None, False, now)
    _server_condition(plan, old, new, server, now_s, generation)
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
    server_block: tuple[Reason, str] | None = None,
) -> tuple[Reason, str]:
    """Run the current stage: watch the live attempt, wait out a backoff, or start the next attempt
    (once the labeler server it needs serves: ``server_block`` says why not yet)."""
    rp = job.spec.run_policy
    prev = stage_status(new, stage)  # ``new`` still holds the old stages here
    if view.live:
        live = view.live[-1]
        st.job_name = live.job_name
        same_job = prev is not None and prev.job_name == live.job_name
        was_preempted = same_job and _queue_reason(new) == Reason.PREEMPTED
        if live.outcome == "queued":
            st.state = "Queued"
            queue = _queue(job, settings)
            # Kueue took back a Job this status saw running: evicted, its pod deleted. The same
            # attempt goes on when Kueue admits the Job again, so it is no failure.
            if same_job and prev is not None and (prev.state == "Running" or was_preempted):
                st.message = (
                    f"attempt {live.number} was preempted by Kueue; it waits for readmission in LocalQueue "
                    f"{queue} and resumes from its checkpoint (job {live.job_name})"
                )
                return Reason.PREEMPTED, f"stage {stage} {st.message}"
            st.message = f"attempt {live.number} waits for Kueue to admit it in LocalQueue {queue} (job {live.job_name})"
            return Reason.WAITING_FOR_ADMISSION, f"stage {stage} {st.message}"
        if not (same_job and prev is not None and prev.state == "Running"):
            # Admitted (or created unqueued) since the last status: the stage runs from now on.
            st.start_time = st.start_time or now_s
            new.start_time = new.start_time or now_s
            if same_job and prev is not None and prev.state == "Queued":
                plan.queue_waits.append((stage, max((now - _queued_since(new, now)).total_seconds(), 0.0)))
        again = was_preempted or (
            same_job
            and prev is not None
            and prev.state == "Running"
            and AFTER_PREEMPTION in (prev.message or "")
        )
        st.state = "Running"
        st.message = f"attempt {live.number} running{AFTER_PREEMPTION if again else ''} (job {live.job_name})"
        # live progress from the pods' metrics port: at most one write per 30 s, none if unchanged
        st.progress = next_progress(st.progress, observed.progress.get(stage), now)
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
    blocker = _blocker(job, owner, settings, observed) or server_block
    if blocker is not None:
        plan.requeue(settings.wait_requeue_seconds)
        st.state = "Pending"
        st.message = blocker[1]
        return blocker
    nodes = stage_nodes(job, stage)
    if nodes > 1 and observed.jobset_api is False:
        # Waits rather than fails: installing JobSet (or fixing the operator's RBAC) lets it go on.
        plan.requeue(settings.wait_requeue_seconds)
        st.state = "Pending"
        st.message = (
            f"resources.{stage}.nodes is {nodes}, which runs as a JobSet ({JOBSET_API_VERSION}), but the "
            "operator found no such API in this cluster: install JobSet (https://jobset.sigs.k8s.io) and "
            f"restart the operator, or set resources.{stage}.nodes to 1"
        )
        return Reason.JOBSET_NOT_INSTALLED, f"stage {stage}: {st.message}"
    attempt = view.highest + 1
    job_name = stage_child_name(job, owner.name, stage, attempt)
    invalid = observed.invalid.get(job_name)
    if invalid is not None:
        st.state = "Failed"
        st.message = (
            f"the API server refused stage Job {job_name} as invalid (HTTP 422): {truncate(invalid)}; not "
            f"retried: fix the spec (a changed spec is tried again)"
        )
        return Reason.STAGE_JOB_INVALID, f"stage {stage}: {st.message}"
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
    plan.create.append(build_stage_child(job, owner, stage, attempt, settings, image))
    st.job_name = job_name
    st.attempts = attempt
    # worded as the next pass will see it, so observing the new Job needs no second status write
    if _queue(job, settings):  # created suspended: Kueue decides when it runs
        st.state = "Queued"
        st.message = f"attempt {attempt} waits for Kueue to admit it in LocalQueue {_queue(job, settings)} (job {job_name})"
        return Reason.WAITING_FOR_ADMISSION, f"stage {stage} {st.message}"
    st.state = "Running"
    st.start_time = st.start_time or now_s
    st.message = f"attempt {attempt} running (job {st.job_name})"
    new.start_time = new.start_time or now_s
    return Reason.STAGE_RUNNING, f"stage {stage} {st.message}"


AFTER_PREEMPTION = " again after a preemption"


def _server(
    plan: Plan,
    job: RLAIFJob,
    owner: Owner,
    settings: Settings,
    observed: Observed,
    old: RLAIFJobStatus,
    current: str | None,
    running: bool,
    now: datetime,
) -> ServerStep:
    """The labeler server's step for this pass (see :func:`labeler_server.server_step`), put into
    ``plan``; a later call in the same pass (the job turned out to fail or be suspended) replaces
    an earlier one's objects."""
    step = server_step(
        job,
        owner,
        settings,
        job.spec.image or settings.trainer_image or "",
        current,
        running,
        observed.server,
        old.labeler_server,
        now,
    )
    plan.ensure[:] = [o for o in plan.ensure if o.get("kind") not in ("Deployment", "Service")]
    plan.ensure.extend(step.ensure)
    plan.delete_objects[:] = step.delete
    if step.requeue_after is not None:
        plan.requeue(step.requeue_after)
    return step


def _server_condition(
    plan: Plan, old: RLAIFJobStatus, new: RLAIFJobStatus, step: ServerStep, now_s: str, generation: int | None
) -> None:
    """The LabelerServerReady condition and status.labelerServer of a job with labeler.server, and
    an event each time the condition's reason changes (Warning while a stage waits for it)."""
    new.labeler_server = step.status
    if step.condition is None:
        return
    ready, reason, message = step.condition
    new.conditions = [
        *new.conditions,
        *set_conditions(old.conditions, {"LabelerServerReady": (ready, reason, message)}, now_s, generation),
    ]
    before = condition(old, "LabelerServerReady")
    if before is None or before.reason != reason:
        if before is None and reason == Reason.LABELER_SERVER_NOT_NEEDED:
            return  # a job whose first stage does not ask the labeler: nothing happened yet
        kind = (
            "Normal"
            if reason in (Reason.LABELER_SERVER_READY, Reason.LABELER_SERVER_NOT_NEEDED)
            else "Warning"
        )
        plan.events.append(EventSpec(kind, str(reason), message))


def _queue(job: RLAIFJob, settings: Settings) -> str | None:
    """The Kueue LocalQueue of the stage Jobs (builders labels them with it), if any."""
    return job.spec.run_policy.queue_name or settings.default_queue_name


def _queue_reason(status: RLAIFJobStatus) -> str | None:
    cond = condition(status, "Queued")
    return cond.reason if cond is not None and cond.status == "True" else None


def _queued_since(status: RLAIFJobStatus, now: datetime) -> datetime:
    """When the current wait in the queue began: the Queued condition's transition, or now."""
    cond = condition(status, "Queued")
    if cond is not None and cond.status == "True":
        return parse_time(cond.last_transition_time) or now
    return now


def _invalid_job_fixed(status: RLAIFJobStatus, generation: int | None) -> bool:
    """A job failed with StageJobInvalid, and its spec has changed since."""
    cond = condition(status, "Failed")
    return (
        cond is not None
        and cond.status == "True"
        and cond.reason == Reason.STAGE_JOB_INVALID
        and cond.observed_generation is not None
        and cond.observed_generation != generation
    )


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
    # Each event is named after what it was derived from (see EventSpec.key): the same pass
    # repeated after a crash or an API-server outage names the same event, which is posted once.
    basis = json.dumps([(body.get("metadata") or {}).get("uid"), body.get("status") or {}], sort_keys=True)
    plan.events = [
        dataclasses.replace(
            e,
            key=hashlib.sha256(f"{basis}\0{e.type}\0{e.reason}\0{e.message}".encode()).hexdigest()[:20],
        )
        for e in plan.events
    ]
    return plan
