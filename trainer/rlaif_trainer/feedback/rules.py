"""Rule-based labelers for the ``python`` provider, for demos and tests.

``labeler: {provider: python, callable: "rlaif_trainer.feedback.rules:prefer_shorter"}`` prefers the
shorter response (by words); its ``score`` rewards brevity. Deterministic and instant, so RL tests
can check that the policy learns (responses get shorter).
"""

from __future__ import annotations

import math

from rlaif_trainer.feedback.python import with_score

__all__ = ["brevity_score", "prefer_longer", "prefer_shorter"]

#: Word counts are compared on this scale: a 4-word difference gives P ≈ 0.73.
LENGTH_SCALE = 4.0
#: Responses of this many words score 0; shorter score up to 1, longer down to -1.
TARGET_WORDS = 16.0


def _words(text: str) -> int:
    return len(text.split())


def brevity_score(prompt: str, response: str) -> float:
    """1 for an empty response, 0 at :data:`TARGET_WORDS` words, towards -1 for long ones."""
    return math.tanh((TARGET_WORDS - _words(response)) / TARGET_WORDS)


@with_score(brevity_score)
def prefer_shorter(prompt: str, response_a: str, response_b: str) -> float:
    """P(a is better) = sigmoid((words(b) − words(a)) / LENGTH_SCALE)."""
    x = (_words(response_b) - _words(response_a)) / LENGTH_SCALE
    return 1.0 / (1.0 + math.exp(-x))


@with_score(lambda prompt, response: -brevity_score(prompt, response))
def prefer_longer(prompt: str, response_a: str, response_b: str) -> float:
    """The opposite of :func:`prefer_shorter`."""
    return 1.0 - prefer_shorter(prompt, response_a, response_b)
