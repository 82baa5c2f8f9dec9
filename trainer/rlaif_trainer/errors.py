"""The trainer's :class:`BadInputError`; the exit codes it maps to are in :mod:`rlaif_api.contract`.

A stage raises :class:`BadInputError` when its input itself is wrong; the CLI turns it into
:data:`~rlaif_api.contract.EXIT_BAD_INPUT`, and the operator fails the job at once instead of retrying.
"""

from __future__ import annotations

__all__ = ["BadInputError", "StageTerminated"]


class BadInputError(Exception):
    """The stage's input is wrong in a way that no retry can fix.

    The message must name what is wrong precisely enough to fix it: the file, the line, the field.
    """


class StageTerminated(Exception):
    """The stage was asked to stop (SIGTERM: its pod deleted, suspended or preempted by Kueue).

    Raised from the signal handler the CLI installs, so the stage ends now, not when the kubelet's
    grace period runs out: the trainer is its container's PID 1, which ignores SIGTERM by default.
    It is a retryable failure; the next attempt resumes from the last checkpoint."""
