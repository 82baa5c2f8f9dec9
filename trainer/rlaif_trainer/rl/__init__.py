"""The ``rl`` stage: LoRA policy optimisation against AI feedback (REINFORCE, RLOO, GRPO, PPO).

See :mod:`rlaif_trainer.rl.algorithms` for the objective and KL estimators, and
:mod:`rlaif_trainer.rl.trainer` for the loop, checkpoints and data parallelism. Importing this
package does not import torch; :func:`run` does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run"]


def run(config, *, progress: bool = True) -> dict[str, Any]:
    """Run the rl stage for a resolved :class:`~rlaif_trainer.spec.StageConfig`; return its summary."""
    from rlaif_trainer.rl.trainer import run as _run

    return _run(config, progress=progress)
