"""The plan one reconcile pass returns: what to create, delete and write, and which events to post."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str
    # Names the Event object: derived from the RLAIFJob's uid, the status the event was computed
    # from and the event itself, so a pass repeated after a crash (or a lost response) posts the
    # same name, and the API server's AlreadyExists makes the repost a no-op. Set by reconcile.
    key: str = ""


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
    # Other owned objects to delete: (apiVersion, plural, name), e.g. the labeler server's
    delete_objects: list[tuple[str, str, str]] = field(default_factory=list)
    status: dict[str, Any] | None = None  # the whole new status (wire form); None: unchanged
    events: list[EventSpec] = field(default_factory=list)
    outcomes: list[StageOutcome] = field(default_factory=list)
    queue_waits: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds) per admission
    requeue_after: float | None = None
    delete_self: bool = False
    phase: str = "Pending"

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)
