"""The status conditions for a phase, each with ``observedGeneration``.

Besides the job's own conditions (Running, Succeeded, Failed, Suspended, Ready, Queued) the operator
writes kstatus' two abnormal-true conditions, so that tools built on sigs.k8s.io/cli-utils/pkg/kstatus
(``kpt live status``, cli-utils' apply --wait, Flux without healthCheckExprs) read the job right:
``Reconciling`` is True while it waits or works towards its end (kstatus: InProgress), ``Stalled`` is
True once it cannot get there without a change (kstatus: Failed), and both are False when it
succeeded (kstatus: Current, from ``Ready=True``) or is suspended. Without them kstatus reads only
``Ready``, so a failed job was InProgress and a queued one no different from a running one."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rlaif_api import PHASE_OF_STAGE, WAIT_REASONS, Condition, Reason, RLAIFJobStatus, StageStatus

from .observe import truncate

CONDITION_TYPES = ("Running", "Succeeded", "Failed", "Suspended", "Ready", "Queued", "Reconciling", "Stalled")


def set_conditions(
    old: list[Condition], wanted: dict[str, tuple[bool, str, str]], now: str, generation: int | None
) -> list[Condition]:
    """The conditions of ``wanted``, in its order, with metav1.Condition semantics:
    lastTransitionTime changes only when the status flips."""
    by_type = {c.type: c for c in old}
    out = []
    for ctype in wanted:
        status_bool, reason, message = wanted[ctype]
        status = "True" if status_bool else "False"
        prev = by_type.get(ctype)  # type: ignore[call-overload]
        ltt = prev.last_transition_time if prev is not None and prev.status == status else now
        out.append(
            Condition(
                type=ctype,
                status=status,
                reason=reason,
                message=truncate(message, 32768),
                last_transition_time=ltt,
                observed_generation=generation,
            )
        )
    return out


def health_of(phase: str, reason: str) -> str:
    """The job's health for (``phase``, ``reason``), the one call the conditions, kstatus and the
    Argo CD and Flux checks (deploy/) agree on: InProgress, Failed, Current or Suspended.

    - Failed: phase Failed (whatever the reason: BackoffLimitExceeded, DeadlineExceeded,
      QueueTimeoutExceeded, StageJobInvalid, RewardModelBelowGate, BadInput), or a spec the
      operator refuses (InvalidSpec): nothing happens until the spec changes. ``Stalled`` is True.
    - Current: phase Succeeded. Neither is True, ``Ready`` is True.
    - Suspended: as the spec asks. Neither is True; kstatus has no notion of suspension and reads
      ``Ready=False`` as InProgress, Argo CD says Suspended, Flux's healthCheckExprs Current.
    - InProgress: everything else: pending, queued in Kueue, preempted, running, resumed, backing
      off, waiting for a claim or an image. ``Reconciling`` is True."""
    if phase == "Failed" or reason == Reason.INVALID_SPEC:
        return "Failed"
    if phase in ("Succeeded", "Suspended"):
        return "Current" if phase == "Succeeded" else "Suspended"
    return "InProgress"


def conditions_for(phase: str, reason: str, message: str) -> dict[str, tuple[bool, str, str]]:
    """The conditions for a phase; ``reason``/``message`` explain the phase (CamelCase reason).

    Phase ``Queued`` (Kueue holds the current stage's Job): Queued is True and Running False, both
    with the queueing reason and message, so a queued job never reads as running."""
    settled = phase in ("Succeeded", "Failed", "Suspended")
    active = phase in PHASE_OF_STAGE.values() and reason not in WAIT_REASONS
    verdict = health_of(phase, reason)
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
        "Queued": (
            phase == "Queued",
            reason if phase == "Queued" else phase,
            message if phase == "Queued" else "",
        ),
        # kstatus' pair, both with the phase's Reason; the message only on the one that is True.
        "Reconciling": (verdict == "InProgress", reason, message if verdict == "InProgress" else ""),
        "Stalled": (verdict == "Failed", reason, message if verdict == "Failed" else ""),
    }


def parse_status(raw: dict[str, Any] | None) -> RLAIFJobStatus:
    if not raw:
        return RLAIFJobStatus()
    try:
        return RLAIFJobStatus.model_validate(raw)
    except ValidationError:
        return RLAIFJobStatus()


def stage_status(status: RLAIFJobStatus, stage: str) -> StageStatus | None:
    return getattr(status.stages, stage) if status.stages is not None else None


def condition(status: RLAIFJobStatus, ctype: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == ctype), None)


def is_true(status: RLAIFJobStatus, ctype: str) -> bool:
    cond = condition(status, ctype)
    return cond is not None and cond.status == "True"
