"""The events (and metric observations) for what changed between the old and the new status."""

from __future__ import annotations

from rlaif_api import WAIT_REASONS, Reason, RLAIFJobStatus, StageStatus

from .conditions import condition, stage_status
from .observe import StageView, truncate
from .plan import EventSpec, Plan, StageOutcome


def _queue_reason(status: RLAIFJobStatus) -> str | None:
    cond = condition(status, "Queued")
    return cond.reason if cond is not None and cond.status == "True" else None


def diff_events(
    plan: Plan, old: RLAIFJobStatus, new: RLAIFJobStatus, views: dict[str, StageView], backoff_limit: int
) -> None:
    """Events and metric observations for what changed between the old and new status."""
    old_phase, new_phase = old.phase or "Pending", new.phase or "Pending"
    running = condition(new, "Running")
    for stage, view in views.items():
        before = stage_status(old, stage) or StageStatus()
        after = stage_status(new, stage) or StageStatus()
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
                    EventSpec(
                        "Normal", Reason.STAGE_SUCCEEDED, f"stage {stage} attempt {a.number} succeeded{took}"
                    )
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
                        Reason.STAGE_FAILED,
                        truncate(f"stage {stage} attempt {a.number} failed{code}: {a.error}; {tail}"),
                    )
                )
        same_job = before.job_name == after.job_name and before.attempts == after.attempts
        # Started means running: on creation, or on Kueue's admission of a queued Job.
        if after.state == "Running" and not (same_job and before.state == "Running"):
            if same_job and before.state == "Queued" and _queue_reason(old) == Reason.PREEMPTED:
                plan.events.append(
                    EventSpec(
                        "Normal",
                        Reason.STAGE_RESUMED,
                        f"stage {stage} attempt {after.attempts} readmitted by Kueue after a preemption; it resumes "
                        f"from its checkpoint (job {after.job_name})",
                    )
                )
            else:
                retry = " (retry)" if after.attempts > 1 else ""
                plan.events.append(
                    EventSpec(
                        "Normal",
                        Reason.STAGE_STARTED,
                        f"started stage {stage} attempt {after.attempts}{retry} (job {after.job_name})",
                    )
                )
        if (
            after.state == "Queued"
            and _queue_reason(new) == Reason.PREEMPTED
            and _queue_reason(old) != Reason.PREEMPTED
        ):
            queued = condition(new, "Queued")
            plan.events.append(EventSpec("Warning", Reason.PREEMPTED, queued.message if queued else ""))
    if old_phase != new_phase:
        detail = (
            f": {ready.message}" if new_phase == "Succeeded" and (ready := condition(new, "Ready")) else ""
        )
        plan.events.append(
            EventSpec(
                "Warning" if new_phase == "Failed" else "Normal",
                Reason.PHASE_CHANGED,
                f"phase {old_phase} -> {new_phase}{detail}",
            )
        )
        if new_phase == "Failed":
            failed = condition(new, "Failed")
            plan.events.append(
                EventSpec(
                    "Warning", failed.reason if failed else Reason.FAILED, failed.message if failed else ""
                )
            )
        elif new_phase == "Suspended":
            plan.events.append(
                EventSpec("Normal", Reason.SUSPENDED, "suspended: running stage Jobs deleted, artifacts kept")
            )
        elif old_phase == "Suspended":
            plan.events.append(EventSpec("Normal", Reason.RESUMED, f"resumed at stage {new.current_stage}"))
    old_running = condition(old, "Running")
    if (
        running is not None
        and running.reason in WAIT_REASONS
        and (old_running is None or old_running.reason != running.reason)
    ):
        plan.events.append(EventSpec("Warning", running.reason, running.message))
