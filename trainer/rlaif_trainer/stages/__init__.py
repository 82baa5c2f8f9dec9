"""The four stages, as recipes over the libraries, and :data:`REGISTRY`, the one stage table.

Each stage module has ``run(config, *, progress) -> <Stage>Summary``, the typed summary that
:mod:`rlaif_api.contract` names for it. The CLI (one stage in a pod) and the pipeline (all stages
locally) both dispatch through :data:`REGISTRY` and both turn the outcome into an exit code and a
message with :func:`run_stage`, so a local run fails exactly as a pod would, and the message is the
summary's one serialisation (:meth:`rlaif_api.summaries.StageSummary.to_message`). Stage modules
are imported on first use: ``rlaif-train --help`` and ``validate`` need no torch.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from dataclasses import dataclass
from typing import Any

from rlaif_api.contract import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, STAGE_ORDER, STAGES, StageContract
from rlaif_api.summaries import StageSummary
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

    def run(self, config: Any, *, progress: bool = True) -> StageSummary:
        """Run the stage; its summary must be the model its contract names (a stage returning
        anything else is a bug in the trainer, so a retryable failure, not a message nobody reads)."""
        stage_module = importlib.import_module(self.module)
        summary = stage_module.run(config, progress=progress)
        if not isinstance(summary, self.contract.summary):
            raise TypeError(
                f"stage {self.name} returned {type(summary).__name__}, not its {self.contract.summary.__name__}"
            )
        return summary


REGISTRY: dict[str, StageEntry] = {
    name: StageEntry(STAGES[name], f"rlaif_trainer.stages.{name}") for name in STAGE_ORDER
}


@dataclass(frozen=True)
class StageOutcome:
    """How a stage ended: the process exit code of the stage contract, and the message to report
    (``{"stage", **summary}``, or ``{"stage", "error", "permanent"[, "reason", figures]}`` on failure)."""

    exit_code: int
    message: dict[str, Any]
    summary: StageSummary | None = None  # the stage's own typed summary, when it succeeded

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
        figures = getattr(err, "summary", None)
        message.update(figures.to_message() if isinstance(figures, StageSummary) else figures or {})
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
    return StageOutcome(EXIT_OK, {"stage": stage, **summary.to_message()}, summary)


__all__ = ["REGISTRY", "StageEntry", "StageOutcome", "failure", "run_stage"]
