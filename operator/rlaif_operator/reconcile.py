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
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from rlaif_trainer import spec as api
from rlaif_trainer.errors import EXIT_BAD_INPUT
from rlaif_trainer.spec import (
    PHASE_OF_STAGE,
    RESULT_KEYS,
    STAGE_ORDER,
    Condition,
    RLAIFJob,
    RLAIFJobStatus,
    StageStatus,
)

from .builders import (
    CONTAINER_NAME,
    LABEL_ATTEMPT,
    LABEL_STAGE,
    Owner,
    Settings,
    build_configmap,
    build_pvc,
    build_stage_job,
    stage_job_name,
    wants_pvc,
)

CONDITION_TYPES = ("Running", "Succeeded", "Failed", "Suspended", "Ready")
TERMINAL_PHASES = ("Succeeded", "Failed")
MAX_MESSAGE = 1024
# A running stage Job with no pod this long after it started: the Job controller is being refused
# the pod (a pods or GPU ResourceQuota, a missing ServiceAccount, an admission webhook). No timer
# is set for it: the next pass notices (at the latest the periodic resync), because a timer per
# stage start cost 2000 extra passes in the N = 500 benchmark for a condition that is rare.
POD_MISSING_SECONDS = 30.0

# --------------------------------------------------------------------------------------------------
# time
# --------------------------------------------------------------------------------------------------


def fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def backoff_delay(failures: int, base_seconds: float, cap_seconds: float) -> float:
    """Delay before the retry that follows the ``failures``-th failure: base, 2*base, 4*base... capped."""
    if failures <= 0:
        return 0.0
    return float(min(base_seconds * (2 ** (failures - 1)), cap_seconds))


# --------------------------------------------------------------------------------------------------
# observed children, summarized from raw API objects (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    """What the core needs to know about one stage Job."""

    name: str
    stage: str
    attempt: int
    owner_uid: str | None = None
    created: str | None = None
    started: str | None = None  # status.startTime: set by the Job controller, again on unsuspend
    suspended: bool = False
    complete: bool = False
    failed: bool = False
    failed_message: str | None = None
    finished_at: str | None = None
    deleting: bool = False

    def for_queueing(self) -> JobInfo:
        """What a watch event must change to be worth a pass: the Job controller's first status
        update only sets startTime, which a pass reads but never acts on at once."""
        return dataclasses.replace(self, started=None)


@dataclass(frozen=True)
class PodInfo:
    """What the core needs to know about one stage pod."""

    name: str
    job_name: str
    phase: str = "Pending"
    exit_code: int | None = None
    message: str | None = None
    reason: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    waiting: str | None = None  # why the pod is stuck before running, e.g. "ImagePullBackOff: ..."


def summarize_job(body: dict[str, Any]) -> JobInfo | None:
    """A stage Job's essentials, or None when it is not a stage Job (no stage/attempt labels)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    stage = labels.get(LABEL_STAGE)
    if stage not in STAGE_ORDER:
        return None
    try:
        attempt = int(labels.get(LABEL_ATTEMPT) or meta.get("name", "").rsplit("-", 1)[-1])
    except ValueError:
        return None
    owner_uid = next(
        (
            ref.get("uid")
            for ref in meta.get("ownerReferences") or []
            if ref.get("kind") == api.KIND and ref.get("controller")
        ),
        None,
    )
    status = body.get("status") or {}
    complete = failed = False
    failed_message = finished_at = None
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            complete = True
            finished_at = finished_at or cond.get("lastTransitionTime")
        elif cond.get("type") in ("Failed", "FailureTarget"):
            failed = True
            failed_message = cond.get("message") or cond.get("reason")
            finished_at = finished_at or cond.get("lastTransitionTime")
    return JobInfo(
        name=meta.get("name", ""),
        stage=str(stage),
        attempt=attempt,
        owner_uid=owner_uid,
        created=meta.get("creationTimestamp"),
        started=status.get("startTime"),
        suspended=bool((body.get("spec") or {}).get("suspend")),
        complete=complete,
        failed=failed,
        failed_message=failed_message,
        finished_at=status.get("completionTime") or finished_at,
        deleting=bool(meta.get("deletionTimestamp")),
    )


# A container waits for these on its way to running; anything else (ImagePullBackOff,
# CreateContainerConfigError for a missing Secret, ...) needs a person, so status says it.
NORMAL_WAITING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})


def summarize_pod(body: dict[str, Any]) -> PodInfo | None:
    """A stage pod's essentials: phase and the trainer container's termination state."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if not job_name:
        job_name = next(
            (r.get("name") for r in meta.get("ownerReferences") or [] if r.get("kind") == "Job"), None
        )
    if not job_name:
        return None
    status = body.get("status") or {}
    exit_code = message = reason = started = finished = waiting = None
    statuses = status.get("containerStatuses") or []
    chosen = next((s for s in statuses if s.get("name") == CONTAINER_NAME), statuses[0] if statuses else None)
    stuck = ((chosen or {}).get("state") or {}).get("waiting") or {}
    if stuck.get("reason") and stuck["reason"] not in NORMAL_WAITING_REASONS:
        waiting = f"{stuck['reason']}: {stuck['message']}" if stuck.get("message") else stuck["reason"]
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            waiting = f"Unschedulable: {cond.get('message') or 'no node fits the pod'}"
    if chosen is not None:
        terminated = (chosen.get("state") or {}).get("terminated") or (chosen.get("lastState") or {}).get(
            "terminated"
        )
        if terminated:
            exit_code = terminated.get("exitCode")
            message = terminated.get("message")
            reason = terminated.get("reason")
            started = terminated.get("startedAt")
            finished = terminated.get("finishedAt")
    return PodInfo(
        name=meta.get("name", ""),
        job_name=job_name,
        phase=status.get("phase") or "Pending",
        exit_code=exit_code,
        message=message,
        reason=reason or status.get("reason"),
        started_at=started or status.get("startTime"),
        finished_at=finished,
        waiting=_truncate(waiting, 512)
        if waiting and (status.get("phase") or "Pending") == "Pending"
        else None,
    )


@dataclass
class Observed:
    """The children of one RLAIFJob, as the operator's caches see them."""

    jobs: list[JobInfo] = field(default_factory=list)
    pods: dict[str, list[PodInfo]] = field(default_factory=dict)  # by stage Job name
    claims: frozenset[str] | None = None  # PVC names in the namespace; None when unknown
    # stage Job name -> (the API server's refusal, seconds until it is tried again)
    refused: dict[str, tuple[str, float]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class StageOutcome:
    """One finished attempt, for the metrics."""

    stage: str
    result: str  # succeeded | failed
    duration_seconds: float | None


@dataclass
class Plan:
    ensure: list[dict[str, Any]] = field(default_factory=list)  # create if absent (ConfigMap, PVC)
    create: list[dict[str, Any]] = field(default_factory=list)  # stage Jobs
    delete: list[str] = field(default_factory=list)  # stage Job names
    status: dict[str, Any] | None = None  # the whole new status (wire form); None: unchanged
    events: list[EventSpec] = field(default_factory=list)
    outcomes: list[StageOutcome] = field(default_factory=list)
    requeue_after: float | None = None
    delete_self: bool = False
    phase: str = "Pending"

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# --------------------------------------------------------------------------------------------------
# per-attempt and per-stage views
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    number: int
    job_name: str
    outcome: str  # active | queued | succeeded | failed | permanent | deleting
    exit_code: int | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    started: str | None = None
    finished: str | None = None
    job_started: str | None = None  # when the Job controller last started the Job

    @property
    def terminal(self) -> bool:
        return self.outcome in ("succeeded", "failed", "permanent")

    def duration(self) -> float | None:
        start, end = parse_time(self.started), parse_time(self.finished)
        if start is None or end is None:
            return None
        return max((end - start).total_seconds(), 0.0)


def _parse_summary(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    try:
        value = json.loads(message.strip().splitlines()[-1] if message.strip() else message)
    except (ValueError, IndexError):
        return None
    return value if isinstance(value, dict) else None


def _truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attempt(job: JobInfo, pods: list[PodInfo]) -> Attempt:
    terminal = [p for p in pods if p.phase in ("Succeeded", "Failed")]
    pod = terminal[-1] if terminal else (pods[-1] if pods else None)
    summary = _parse_summary(pod.message) if pod else None
    started = job.created or (pod.started_at if pod else None)
    finished = (pod.finished_at if pod and pod.finished_at else None) or job.finished_at

    def error_text() -> str:
        if summary and summary.get("error"):
            return _truncate(str(summary["error"]))
        if pod and pod.message:
            return _truncate(pod.message.strip())
        if pod and pod.exit_code is not None:
            return f"exit code {pod.exit_code}" + (f" ({pod.reason})" if pod.reason else "")
        return _truncate(job.failed_message or "the stage pod failed")

    base: dict[str, Any] = {
        "number": job.attempt,
        "job_name": job.name,
        "started": started,
        "finished": finished,
        "job_started": job.started,
    }
    if (pod is not None and pod.phase == "Succeeded") or (
        job.complete and not (pod and pod.phase == "Failed")
    ):
        return Attempt(outcome="succeeded", summary=summary, exit_code=0, **base)
    if job.deleting:
        return Attempt(outcome="deleting", **base)
    if pod is not None and pod.phase == "Failed":
        outcome = "permanent" if pod.exit_code == EXIT_BAD_INPUT else "failed"
        return Attempt(outcome=outcome, exit_code=pod.exit_code, error=error_text(), summary=summary, **base)
    if job.failed:
        return Attempt(outcome="failed", error=error_text(), **base)
    if job.suspended:
        return Attempt(outcome="queued", **base)
    return Attempt(outcome="active", **base)


@dataclass
class StageView:
    stage: str
    attempts: list[Attempt]
    highest: int  # highest attempt number ever started (children or status)
    succeeded: Attempt | None = None
    permanent: Attempt | None = None
    failures: list[Attempt] = field(default_factory=list)
    live: list[Attempt] = field(default_factory=list)  # active or queued
    sticky_success: bool = False

    @property
    def done(self) -> bool:
        return self.sticky_success or self.succeeded is not None


def _stage_view(stage: str, jobs: list[JobInfo], observed: Observed, old: StageStatus | None) -> StageView:
    attempts = sorted((_attempt(j, observed.pods.get(j.name, [])) for j in jobs), key=lambda a: a.number)
    highest = max([a.number for a in attempts] + [old.attempts if old else 0])
    view = StageView(stage=stage, attempts=attempts, highest=highest)
    view.sticky_success = old is not None and old.state == "Succeeded"
    for a in attempts:
        if a.outcome == "succeeded":
            view.succeeded = a
        elif a.outcome == "permanent":
            view.permanent = view.permanent or a
        elif a.outcome == "failed":
            view.failures.append(a)
        elif a.outcome in ("active", "queued"):
            view.live.append(a)
    return view


# --------------------------------------------------------------------------------------------------
# conditions
# --------------------------------------------------------------------------------------------------


def _set_conditions(
    old: list[Condition], wanted: dict[str, tuple[bool, str, str]], now: str, generation: int | None
) -> list[Condition]:
    """metav1.Condition semantics: lastTransitionTime changes only when the status flips."""
    by_type = {c.type: c for c in old}
    out = []
    for ctype in CONDITION_TYPES:
        status_bool, reason, message = wanted[ctype]
        status = "True" if status_bool else "False"
        prev = by_type.get(ctype)  # type: ignore[call-overload]
        ltt = prev.last_transition_time if prev is not None and prev.status == status else now
        out.append(
            Condition(
                type=ctype,
                status=status,
                reason=reason,
                message=_truncate(message, 32768),
                last_transition_time=ltt,
                observed_generation=generation,
            )
        )
    return out


def _conditions_for(phase: str, reason: str, message: str) -> dict[str, tuple[bool, str, str]]:
    """The five conditions for a phase; ``reason``/``message`` explain the phase (CamelCase reason)."""
    settled = phase in ("Succeeded", "Failed", "Suspended")
    active = phase in PHASE_OF_STAGE.values() and reason not in WAIT_REASONS
    return {
        "Running": (active, phase if settled else reason, "" if settled else message),
        "Succeeded": (
            phase == "Succeeded",
            reason if phase == "Succeeded" else phase,
            message if phase == "Succeeded" else "",
        ),
        "Failed": (
            phase == "Failed",
            reason if phase == "Failed" else phase,
            message if phase == "Failed" else "",
        ),
        "Suspended": (
            phase == "Suspended",
            reason if phase == "Suspended" else phase,
            message if phase == "Suspended" else "",
        ),
        "Ready": (phase == "Succeeded", reason, message),
    }


WAIT_REASONS = frozenset(
    {"InvalidSpec", "WorkspaceClaimNotFound", "NoTrainerImage", "StagePodWaiting", "StageJobRefused"}
)


def _parse_status(raw: dict[str, Any] | None) -> RLAIFJobStatus:
    if not raw:
        return RLAIFJobStatus()
    try:
        return RLAIFJobStatus.model_validate(raw)
    except ValidationError:
        return RLAIFJobStatus()


def _stage_status(status: RLAIFJobStatus, stage: str) -> StageStatus | None:
    return getattr(status.stages, stage) if status.stages is not None else None


def _condition(status: RLAIFJobStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)


# --------------------------------------------------------------------------------------------------
# reconcile
# --------------------------------------------------------------------------------------------------


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
    old = _parse_status(body.get("status"))
    jobs = [j for j in observed.jobs if j.owner_uid == owner.uid]

    try:
        spec_json = json.dumps(body.get("spec") or {}, sort_keys=True)
        job = _parse_job(owner.name, owner.namespace, spec_json)
    except ValidationError as err:
        invalid = old.model_copy(deep=True)
        invalid.phase = "Pending"
        reason, message = "InvalidSpec", _truncate(f"spec is invalid, fix it to start the job: {err}", 4096)
        invalid.conditions = _set_conditions(
            old.conditions, _conditions_for("Pending", reason, message), now_s, generation
        )
        plan.phase = "Pending"
        _diff_events(plan, old, invalid, {}, 0)
        return _finish(plan, body, old, invalid, now_s, generation)

    new = old.model_copy(deep=True)
    old_phase = old.phase or "Pending"

    # Terminal phases are sticky: children may be cleaned up, the verdict stays.
    if old_phase in TERMINAL_PHASES and _is_true(old, old_phase):
        plan.delete.extend(
            j.name
            for j in jobs
            if not j.deleting and _attempt(j, observed.pods.get(j.name, [])).outcome in ("active", "queued")
        )
        _ttl(plan, job, old, now)
        plan.phase = old_phase
        return _finish(plan, body, old, new, now_s, generation)

    listed = list(job.spec.stages)
    views: dict[str, StageView] = {}
    for stage in listed:
        views[stage] = _stage_view(
            stage, [j for j in jobs if j.stage == stage], observed, _stage_status(old, stage)
        )

    rp = job.spec.run_policy
    stages_status: dict[str, StageStatus] = {}
    for stage in STAGE_ORDER:  # type: ignore[assignment]
        if stage not in listed:
            stages_status[stage] = StageStatus(state="Skipped")
    done = 0
    current: str | None = None
    phase = "Pending"
    reason, message = "Pending", "waiting to start"
    failed_reason: str | None = None
    failed_message = ""
    results = (old.results or api.ResultsStatus()).model_copy(deep=True)

    for stage in listed:
        view = views[stage]
        prev = _stage_status(old, stage)
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
        phase, reason, message = "Succeeded", "AllStagesSucceeded", f"all {len(listed)} stages succeeded"
        new.current_stage = None
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
            failed_reason = "BadInput"
            failed_message = f"stage {current} failed permanently (attempt {view.permanent.number}): {view.permanent.error}"
            st.completion_time = view.permanent.finished or now_s
        elif len(view.failures) > rp.backoff_limit:
            last = view.failures[-1]
            failed_reason = "BackoffLimitExceeded"
            failed_message = f"stage {current} failed {len(view.failures)} times, more than backoffLimit {rp.backoff_limit}: {last.error}"
            st.completion_time = last.finished or now_s
        elif not rp.suspend and deadline is not None and now >= deadline:
            failed_reason = "DeadlineExceeded"
            failed_message = f"the job ran longer than activeDeadlineSeconds ({rp.active_deadline_seconds}s)"
            st.completion_time = now_s
        if failed_reason is not None:
            st.state, st.message = "Failed", failed_message
            phase, reason, message = "Failed", failed_reason, failed_message
            new.completion_time = new.completion_time or now_s
            plan.delete.extend(a.job_name for a in all_live)
        elif rp.suspend:
            phase, reason = "Suspended", "Suspended"
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
        new.current_stage = None if phase == "Succeeded" else new.current_stage
        _ttl(plan, job, new, now)
    new.stages = api.StagesStatus(**stages_status)
    new.conditions = _set_conditions(
        old.conditions, _conditions_for(phase, reason, message), now_s, generation
    )
    plan.phase = phase
    _diff_events(plan, old, new, views, rp.backoff_limit)
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
) -> tuple[str, str]:
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
            return "WaitingForAdmission", f"stage {stage}: {st.message}"
        st.state, st.message = "Running", f"attempt {live.number} running (job {live.job_name})"
        pods = observed.pods.get(live.job_name, [])
        stuck = next((p for p in reversed(pods) if p.waiting), None)
        if stuck is not None:
            return (
                "StagePodWaiting",
                f"stage {stage} attempt {live.number}: pod {stuck.name} is not running: {stuck.waiting}",
            )
        job_started = parse_time(live.job_started)
        if (
            not pods
            and job_started is not None
            and (now - job_started).total_seconds() >= POD_MISSING_SECONDS
        ):
            return "StagePodWaiting", (
                f"stage {stage} attempt {live.number}: job {live.job_name} has created no pod within "
                f"{POD_MISSING_SECONDS:.0f}s; the Job controller is likely refused it (a ResourceQuota, a missing "
                f"ServiceAccount, an admission webhook): see the FailedCreate events of `kubectl describe job "
                f"{live.job_name}`"
            )
        return "StageRunning", f"stage {stage} {st.message}"
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
            return "BackoffRetry", f"stage {stage} {st.message}"
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
        st.message = f"the API server refused stage Job {job_name}: {_truncate(refusal[0])}"
        return (
            "StageJobRefused",
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
    return "StageRunning", f"stage {stage} {st.message}"


def _blocker(job: RLAIFJob, owner: Owner, settings: Settings, observed: Observed) -> tuple[str, str] | None:
    """Why a new stage Job cannot be created yet, if anything: the job waits, it does not fail."""
    if not (job.spec.image or settings.trainer_image):
        return "NoTrainerImage", "no trainer image: set spec.image or the operator's --trainer-image"
    claim = job.spec.storage.persistent_volume_claim
    if claim is not None and observed.claims is not None and claim.claim_name not in observed.claims:
        return (
            "WorkspaceClaimNotFound",
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


def _is_true(status: RLAIFJobStatus, ctype: str) -> bool:
    cond = _condition(status, ctype)
    return cond is not None and cond.status == "True"


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


def _diff_events(
    plan: Plan, old: RLAIFJobStatus, new: RLAIFJobStatus, views: dict[str, StageView], backoff_limit: int
) -> None:
    """Events and metric observations for what changed between the old and new status."""
    old_phase, new_phase = old.phase or "Pending", new.phase or "Pending"
    running = _condition(new, "Running")
    for stage, view in views.items():
        before = _stage_status(old, stage) or StageStatus()
        after = _stage_status(new, stage) or StageStatus()
        # attempts that ended since the old status was written
        before_ended = before.state in ("Succeeded", "Failed") or before.next_retry_time is not None
        for a in view.attempts:
            if not a.terminal or view.sticky_success:
                continue
            if a.number < before.attempts or (a.number == before.attempts and before_ended):
                continue
            duration = a.duration()
            took = f" in {duration:.0f}s" if duration is not None else ""
            if a.outcome == "succeeded":
                plan.outcomes.append(StageOutcome(stage, "succeeded", duration))
                plan.events.append(
                    EventSpec("Normal", "StageSucceeded", f"stage {stage} attempt {a.number} succeeded{took}")
                )
            else:
                plan.outcomes.append(StageOutcome(stage, "failed", duration))
                failures = len([f for f in view.failures if f.number <= a.number])
                if a.outcome == "permanent":
                    tail = "permanent failure (bad input), not retrying"
                elif failures > backoff_limit:
                    tail = f"no retries left (backoffLimit {backoff_limit})"
                else:
                    tail = f"retry {failures}/{backoff_limit}" + (
                        f" at {after.next_retry_time}" if after.next_retry_time else ""
                    )
                code = f" (exit code {a.exit_code})" if a.exit_code is not None else ""
                plan.events.append(
                    EventSpec(
                        "Warning",
                        "StageFailed",
                        _truncate(f"stage {stage} attempt {a.number} failed{code}: {a.error}; {tail}"),
                    )
                )
        if after.attempts > before.attempts and after.state == "Running":
            retry = " (retry)" if after.attempts > 1 else ""
            plan.events.append(
                EventSpec(
                    "Normal",
                    "StageStarted",
                    f"started stage {stage} attempt {after.attempts}{retry} (job {after.job_name})",
                )
            )
    if old_phase != new_phase:
        detail = (
            f": {ready.message}" if new_phase == "Succeeded" and (ready := _condition(new, "Ready")) else ""
        )
        plan.events.append(
            EventSpec(
                "Warning" if new_phase == "Failed" else "Normal",
                "PhaseChanged",
                f"phase {old_phase} -> {new_phase}{detail}",
            )
        )
        if new_phase == "Failed":
            failed = _condition(new, "Failed")
            plan.events.append(
                EventSpec("Warning", failed.reason if failed else "Failed", failed.message if failed else "")
            )
        elif new_phase == "Suspended":
            plan.events.append(
                EventSpec("Normal", "Suspended", "suspended: running stage Jobs deleted, artifacts kept")
            )
        elif old_phase == "Suspended":
            plan.events.append(EventSpec("Normal", "Resumed", f"resumed at stage {new.current_stage}"))
    old_running = _condition(old, "Running")
    if (
        running is not None
        and running.reason in WAIT_REASONS
        and (old_running is None or old_running.reason != running.reason)
    ):
        plan.events.append(EventSpec("Warning", running.reason, running.message))


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: changed keys, ``None`` for
    removed ones, lists replaced whole. Sending only the difference keeps status writes small and
    leaves fields written by anyone else untouched."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = (
                merge_patch(old[key], value)
                if isinstance(value, dict) and isinstance(old[key], dict)
                else value
            )
    return patch
