"""What the reconcile core knows of the world, parsed from raw API objects (pure).

:func:`summarize_job` and :func:`summarize_pod` reduce a stage Job and a stage pod to the few
fields a pass reads (the watch handlers store only these), and :func:`stage_view` turns the Jobs
and pods of one stage into numbered attempts with an outcome each: active, queued, succeeded,
failed, permanent (the trainer's bad-input exit code) or deleting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import rlaif_api as api
from rlaif_api import STAGE_ORDER, StageStatus
from rlaif_api.contract import EXIT_BAD_INPUT

from .builders import (
    CONTAINER_NAME,
    JOBSET_NAME_LABEL,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_SERVER,
    LABEL_STAGE,
    LABELER_SERVER_COMPONENT,
)
from .timing import parse_time

MAX_MESSAGE = 1024
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


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
    completions: int = 1  # pods that must succeed: resources.label.shards for a sharded label Job
    kind: str = "Job"  # or "JobSet": a multi-node stage (its completions are its nodes)

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
    ip: str | None = None  # status.podIP: where the operator reads the stage's live progress
    rank: int | None = None  # the completion index of an Indexed Job's pod (a JobSet's node rank)
    # metadata.deletionTimestamp: the pod is being removed, most often by the Job controller because
    # Kueue suspended (preempted) its Job; a real kubelet reports it Failed on its way out.
    deleted: bool = False


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
        completions=int((body.get("spec") or {}).get("completions") or 1),
    )


# A container waits for these on its way to running; anything else (ImagePullBackOff,
# CreateContainerConfigError for a missing Secret, ...) needs a person, so status says it.
NORMAL_WAITING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})


def summarize_pod(body: dict[str, Any]) -> PodInfo | None:
    """A stage pod's essentials: phase and the trainer container's termination state."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    # A JobSet's pods are keyed by the JobSet (the stage's child), not by its replicated Job.
    job_name = (
        labels.get(JOBSET_NAME_LABEL) or labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    )
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
        waiting=truncate(waiting, 512)
        if waiting and (status.get("phase") or "Pending") == "Pending"
        else None,
        rank=_completion_index(meta),
        ip=status.get("podIP") or None,
        deleted=bool(meta.get("deletionTimestamp")),
    )


def _completion_index(meta: dict[str, Any]) -> int | None:
    value = (meta.get("labels") or {}).get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(
        COMPLETION_INDEX
    )
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def summarize_jobset(body: dict[str, Any]) -> JobInfo | None:
    """A multi-node stage's JobSet, reduced to what a stage Job is reduced to (:func:`summarize_job`):
    its ``Completed`` and ``Failed`` conditions are a Job's ``Complete`` and ``Failed``; it was started
    when created unsuspended, or when its ``Suspended`` condition last turned False (Kueue's
    admission)."""
    info = summarize_job({**body, "status": {}})
    if info is None:
        return None
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    complete = failed = False
    failed_message = finished_at = None
    started = None if spec.get("suspend") else info.created
    for cond in status.get("conditions") or []:
        kind, true = cond.get("type"), cond.get("status") == "True"
        if kind == "Completed" and true:
            complete, finished_at = True, cond.get("lastTransitionTime")
        elif kind == "Failed" and true:
            failed, finished_at = True, cond.get("lastTransitionTime")
            failed_message = cond.get("message") or cond.get("reason")
        elif kind == "Suspended" and not true and not spec.get("suspend"):
            started = cond.get("lastTransitionTime") or started
    replicated = (spec.get("replicatedJobs") or [{}])[0]
    child = (replicated.get("template") or {}).get("spec") or {}
    return dataclasses.replace(
        info,
        kind="JobSet",
        started=started,
        complete=complete,
        failed=failed,
        failed_message=failed_message,
        finished_at=finished_at,
        completions=int(child.get("completions") or 1) * int(replicated.get("replicas") or 1),
    )


# -- the operator-run labeler server (labeler.server) -------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """The labeler server's Deployment, with the last state of its pods."""

    name: str
    owner_uid: str | None
    created: str | None
    ready_replicas: int = 0
    deleting: bool = False
    pod_state: str | None = None  # e.g. "ImagePullBackOff: ...", "CrashLoopBackOff", "Unschedulable: ..."


def summarize_server(body: dict[str, Any]) -> ServerInfo | None:
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL_COMPONENT) != LABELER_SERVER_COMPONENT:
        return None
    owner_uid = next(
        (
            r.get("uid")
            for r in meta.get("ownerReferences") or []
            if r.get("kind") == api.KIND and r.get("controller")
        ),
        None,
    )
    return ServerInfo(
        name=meta.get("name", ""),
        owner_uid=owner_uid,
        created=meta.get("creationTimestamp"),
        ready_replicas=int((body.get("status") or {}).get("readyReplicas") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class ServerPodState:
    """One labeler-server pod: whether it serves, and its state in words (why it does not, if not)."""

    ready: bool
    state: str


def summarize_server_pod(body: dict[str, Any]) -> tuple[str, ServerPodState] | None:
    """(server name, the pod's state) for a labeler-server pod, or None if it is not one. The state
    of a pod that does not serve is the container's waiting or last terminated state, or the
    scheduler's refusal."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_COMPONENT) != LABELER_SERVER_COMPONENT or not labels.get(LABEL_SERVER):
        return None
    status = body.get("status") or {}
    ready = False
    state = f"pod {meta.get('name', '')} is {status.get('phase') or 'Pending'}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            state = f"pod {meta.get('name', '')}: {cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") and waiting["reason"] not in NORMAL_WAITING_REASONS:
            state = f"pod {meta.get('name', '')}: {waiting['reason']}: {waiting.get('message') or ''}"
            if last:
                state += f" (last exit code {last.get('exitCode')}: {last.get('reason') or ''})"
        elif cs.get("ready"):
            ready, state = True, f"pod {meta.get('name', '')} is ready"
        elif (cs.get("state") or {}).get("running"):
            state = f"pod {meta.get('name', '')} is running, not ready yet (loading the model)"
    return str(labels[LABEL_SERVER]), ServerPodState(ready, truncate(state.rstrip(": "), 512))


@dataclass
class Observed:
    """The children of one RLAIFJob, as the operator's caches see them."""

    jobs: list[JobInfo] = field(default_factory=list)
    pods: dict[str, list[PodInfo]] = field(default_factory=dict)  # by stage Job name
    claims: frozenset[str] | None = None  # PVC names in the namespace; None when unknown
    # stage Job name -> (the API server's refusal, seconds until it is tried again)
    refused: dict[str, tuple[str, float]] = field(default_factory=dict)
    # stage Job name -> the API server's message, for a Job refused as invalid (HTTP 422) for the
    # current spec: it would be refused again, so the job fails instead of retrying
    invalid: dict[str, str] = field(default_factory=dict)
    # stage -> the latest live progress scraped from its running pods (progress.ProgressScraper)
    progress: dict[str, Any] = field(default_factory=dict)
    # Whether the cluster serves jobset.x-k8s.io/v1alpha2 (multi-node stages run as JobSets): False
    # once creating a JobSet was answered "no such resource", None while unknown
    jobset_api: bool | None = None
    # The labeler server's Deployment (labeler.server), with its pods' last state; None when absent
    server: ServerInfo | None = None


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


def parse_summary(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    try:
        value = json.loads(message.strip().splitlines()[-1] if message.strip() else message)
    except (ValueError, IndexError):
        return None
    return value if isinstance(value, dict) else None


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reporting_pod(terminal: list[PodInfo]) -> PodInfo | None:
    """The pod that speaks for an Indexed (sharded) Job's attempt: a failed pod (one failed pod fails
    the attempt), else the pod whose summary is the whole stage's (the shard that merged; each other
    shard's summary has ``shard``), else none: one finished shard is not a finished stage."""
    failed = [p for p in terminal if p.phase == "Failed"]
    if failed:
        return failed[-1]
    return next(
        (p for p in reversed(terminal) if (s := parse_summary(p.message)) is not None and "shard" not in s),
        None,
    )


def _speaking_rank(job: JobInfo, terminal: list[PodInfo]) -> PodInfo | None:
    """The pod that speaks for a JobSet's attempt: the rank that failed first (one failed rank fails
    the attempt, and the Job controller then stops the others, whose own failure says nothing),
    else, once the JobSet completed, rank 0, whose termination message is the stage's summary;
    else none: a rank that finished is not a finished stage."""
    failed = [p for p in terminal if p.phase == "Failed"]
    if failed:
        return min(failed, key=lambda p: (p.finished_at or "~", p.rank if p.rank is not None else 1 << 30))
    if job.complete:
        return next((p for p in terminal if p.rank == 0), None)
    return None


def attempt_of(job: JobInfo, pods: list[PodInfo]) -> Attempt:
    # A pod deleted while it ran and stopped on its way out (Failed) is no verdict on the attempt:
    # a preempted stage's pod still lingers like that on a real node after Kueue readmits its Job.
    # Whether the attempt failed is then the Job's own status (a deleted pod counts there).
    counted = [p for p in pods if not (p.deleted and p.phase == "Failed")]
    terminal = [p for p in counted if p.phase in ("Succeeded", "Failed")]
    pod = terminal[-1] if terminal else (counted[-1] if counted else None)
    if job.kind == "JobSet":
        pod = _speaking_rank(job, terminal)
    elif job.completions > 1:
        pod = _reporting_pod(terminal)
    summary = parse_summary(pod.message) if pod else None
    started = job.created or (pod.started_at if pod else None)
    finished = (pod.finished_at if pod and pod.finished_at else None) or job.finished_at

    def error_text() -> str:
        if summary and summary.get("error"):
            return truncate(str(summary["error"]))
        if pod and pod.message:
            return truncate(pod.message.strip())
        if pod and pod.exit_code is not None:
            return f"exit code {pod.exit_code}" + (f" ({pod.reason})" if pod.reason else "")
        return truncate(job.failed_message or "the stage pod failed")

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
    if job.suspended and not job.failed:
        # Not admitted yet, or suspended again by Kueue (preempted): its pods are being deleted,
        # and one the kubelet stopped on the way out (Failed) is no failure of the attempt.
        return Attempt(outcome="queued", **base)
    if pod is not None and pod.phase == "Failed":
        outcome = "permanent" if pod.exit_code == EXIT_BAD_INPUT else "failed"
        return Attempt(outcome=outcome, exit_code=pod.exit_code, error=error_text(), summary=summary, **base)
    if job.failed:
        return Attempt(outcome="failed", error=error_text(), **base)
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


def stage_view(stage: str, jobs: list[JobInfo], observed: Observed, old: StageStatus | None) -> StageView:
    attempts = sorted((attempt_of(j, observed.pods.get(j.name, [])) for j in jobs), key=lambda a: a.number)
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
