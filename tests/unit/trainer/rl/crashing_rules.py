"""A ``python``-provider labeler for the multi-node resume test; holds no tests.

``prefer_shorter``'s preferences and scores, except that scoring SIGKILLs its own process, as a node
loss would, once the file named by ``$RLAIF_TEST_KILL_WHEN_EXISTS`` exists. Pointed at a checkpoint,
it kills every rank in the step after that checkpoint, deterministically; unset, it is
``prefer_shorter``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from rlaif_trainer.feedback.python import with_score
from rlaif_trainer.feedback.rules import brevity_score
from rlaif_trainer.feedback.rules import prefer_shorter as _prefer_shorter

KILL_WHEN_EXISTS = "RLAIF_TEST_KILL_WHEN_EXISTS"


def _score(prompt: str, response: str) -> float:
    marker = os.environ.get(KILL_WHEN_EXISTS)
    if marker and Path(marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return brevity_score(prompt, response)


@with_score(_score)
def prefer_shorter(prompt: str, response_a: str, response_b: str) -> float:
    return _prefer_shorter(prompt, response_a, response_b)
