"""The four stages, as recipes over the libraries, and :data:`REGISTRY`, the one stage table.

Each stage module has ``run(config, *, progress) -> summary``; the CLI (one stage in a pod) and the
pipeline (all stages locally) both dispatch through :data:`REGISTRY` and both turn the outcome into
an exit code with :func:`run_stage`, so a local run fails exactly as a pod would. Stage modules are
imported on first use: ``rlaif-train --help`` and ``validate`` need no torch.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from dataclasses import dataclass
from typing import Any

from rlaif_api.contract import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, STAGE_ORDER, STAGES, StageContract
from rlaif_trainer.errors import BadInputError

log = logging.getLogger("rlaif_trainer")


@dataclass(frozen=True)
class StageEntry:
    """One stage: its contract (phase, artifact, summary model) and the module that runs it."""

    contract: StageContract
    module: str

    @property
    def name(self) -> str:
        return self.contract.name

    def run(self, config: Any, *, progress: bool = True) -> dict[str, Any]:
        stage_module = importlib.import_module(self.module)
        summary: dict[str, Any] = stage_module.run(config, progress=progress)
        return summary


REGISTRY: dict[str, StageEntry] = {
    name: StageEntry(STAGES[name], f"rlaif_trainer.stages.{name}") for name in STAGE_ORDER
}


@dataclass(frozen=True)
class StageOutcome:
    """How a stage ended: the process exit code of the stage contract, and the summary to report
    (the stage's own, or ``{"stage", "error", "permanent"[, "reason", figures]}`` on failure)."""

    exit_code: int
    message: dict[str, Any]
    summary: dict[str, Any] | None = None  # the stage's own summary, when it succeeded

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def failure(stage: str, err: BaseException) -> StageOutcome:
    """The outcome of a stage that raised ``err``: bad input is permanent, anything else retryable."""
    if isinstance(err, BadInputError):
        log.error("bad input, not retrying: %s", err)
        message: dict[str, Any] = {"stage": stage, "error": str(err), "permanent": True}
        # A failure with a reason of its own (the reward model's quality gate) names it, so that the
        # operator's condition and event say why; its figures follow (dropped first if too long).
        if getattr(err, "reason", None):
            message["reason"] = str(err.reason)  # type: ignore[attr-defined]
        message.update(getattr(err, "summary", None) or {})
        return StageOutcome(EXIT_BAD_INPUT, message)
    traceback.print_exception(type(err), err, err.__traceback__)
    return StageOutcome(
        EXIT_RETRYABLE, {"stage": stage, "error": f"{type(err).__name__}: {err}", "permanent": False}
    )


def run_stage(stage: str, config: Any, *, progress: bool = True) -> StageOutcome:
    """Run one stage and map its result or error onto the stage contract's exit codes."""
    try:
        summary = REGISTRY[stage].run(config, progress=progress)
    except Exception as err:
        return failure(stage, err)
    return StageOutcome(EXIT_OK, {"stage": stage, **summary}, summary)


__all__ = ["REGISTRY", "StageEntry", "StageOutcome", "failure", "run_stage"]
