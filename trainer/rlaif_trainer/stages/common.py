"""The rules every stage follows, written once.

* **Resume if done**: a stage whose artifact directory holds a ``DONE`` marker does not run again;
  it reports the summary saved in the marker, with ``"resumed": true``.
* **Finalize**: a stage works in ``partial_dir(<artifact>)`` and ends with
  :func:`rlaif_trainer.data.artifacts.finalize_dir`, which renames it into place and writes ``DONE``
  last, so a half-written artifact is never mistaken for a finished one.
* **Device**: ``$RLAIF_DEVICE`` (e.g. ``cpu`` on a GPU node, for a test) overrides the default,
  which is CUDA when available.
* **Weight sharing**: an ``hf`` labeler or judge that names the policy's own checkpoint (or none)
  reuses the policy already in memory instead of loading a second copy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from rlaif_api import LabelerSpec, RLAIFJobSpec
from rlaif_api.contract import ENV_DEVICE
from rlaif_api.summaries import StageSummary
from rlaif_trainer.data.artifacts import DONE, is_done, read_done
from rlaif_trainer.errors import BadInputError

log = logging.getLogger(__name__)

__all__ = ["device", "resumed_summary", "shares_policy_weights"]

S = TypeVar("S", bound=StageSummary)


def resumed_summary(artifact: str | os.PathLike[str], model: type[S]) -> S | None:
    """The saved summary of a finished stage (its ``model``), marked resumed; ``None`` when the
    stage must run.

    A ``DONE`` marker that does not hold a valid summary is bad input, not a reason to retry: the
    artifact it vouches for is suspect, and the message says how to run the stage again.
    """
    if not is_done(artifact):
        return None
    log.info("%s is complete (DONE): not running the stage again", artifact)
    try:
        return model.model_validate({**read_done(artifact), "resumed": True})
    except ValidationError as err:
        raise BadInputError(
            f"{Path(artifact) / DONE} does not hold a valid {model.__name__} ({err.error_count()} "
            f"error(s): {err.errors()[0]['loc']} {err.errors()[0]['msg']}): delete {artifact} to run the stage again"
        ) from err


def device() -> str | None:
    """The device the job asks for (``$RLAIF_DEVICE``), or ``None`` for the default (CUDA if available)."""
    return os.environ.get(ENV_DEVICE) or None


def shares_policy_weights(labeler: LabelerSpec | None, spec: RLAIFJobSpec) -> bool:
    """Whether ``labeler`` (a labeler or judge) is the policy's own model run locally, so that the
    stage can hand it the policy in memory (with adapters disabled: the initial weights)."""
    return labeler is not None and labeler.provider == "hf" and labeler.model in (None, spec.policy.model)
