"""The ``python`` provider: preferences and scores from a Python callable (rule-based or verifiable feedback).

``labeler.callable: "package.module:name"`` names an importable object. What it may be:

* **a function** ``f(prompt: str, response_a: str, response_b: str) -> float`` returning the
  probability (in [0, 1]) that ``response_a`` is better. If the function has an attribute
  ``score`` that is callable (``f.score = my_score``), it is used as the direct reward
  ``score(prompt: str, response: str) -> float`` in [-1, 1]; see :func:`with_score`.
* **an object or class** with methods ``preference(prompt, a, b) -> float`` and/or
  ``score(prompt, response) -> float`` (a class is instantiated without arguments).

Only one of the two may be given; the missing one raises a clear error when used. With
``positionDebias`` (the default) a preference function is called in both orders and averaged, so
a function that ignores order gives ``consistent`` pairs and an order-sensitive one is debiased like
an LLM labeler. Values outside the ranges are clipped. Example, shipped with the trainer:
:func:`rlaif_trainer.feedback.rules.prefer_shorter`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rlaif_trainer.feedback.base import PairwiseLabelerBase

__all__ = ["PythonLabeler", "resolve_callable", "with_score"]


def with_score(score: Callable[[str, str], float]) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator attaching a direct-reward ``score`` function to a preference function."""

    def deco(fn: Callable[..., float]) -> Callable[..., float]:
        fn.score = score  # type: ignore[attr-defined]
        return fn

    return deco


def resolve_callable(ref: str) -> Any:
    """Import ``"package.module:name"``."""
    if ":" not in ref:
        raise ValueError(f"labeler.callable {ref!r} must look like 'package.module:function'")
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(f"labeler.callable {ref!r}: cannot import {mod_name!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"labeler.callable {ref!r}: module {mod_name!r} has no attribute {attr!r}") from None


def _clip(x: float, lo: float, hi: float) -> float:
    x = float(x)
    if x != x:  # NaN
        raise ValueError("the python labeler returned NaN")
    return min(hi, max(lo, x))


class PythonLabeler(PairwiseLabelerBase):
    """Wraps a preference function and/or a score function (see the module docstring)."""

    def __init__(
        self,
        preference_fn: Callable[[str, str, str], float] | None,
        score_fn: Callable[[str, str], float] | None = None,
        *,
        position_debias: bool = True,
        name: str = "python",
    ) -> None:
        super().__init__(position_debias=position_debias)
        if preference_fn is None and score_fn is None:
            raise ValueError(f"{name}: needs a preference function, a score function, or both")
        self.preference_fn = preference_fn
        self.score_fn = score_fn
        self.name = name

    @classmethod
    def from_spec(cls, ref: str, *, position_debias: bool = True) -> PythonLabeler:
        obj = resolve_callable(ref)
        if inspect.isclass(obj):
            obj = obj()
        pref = getattr(obj, "preference", None)
        score = getattr(obj, "score", None)
        if callable(pref) or (callable(score) and not inspect.isfunction(obj)):
            return cls(
                pref if callable(pref) else None,
                score if callable(score) else None,
                position_debias=position_debias,
                name=ref,
            )
        if callable(obj):
            return cls(obj, score if callable(score) else None, position_debias=position_debias, name=ref)
        raise ValueError(f"labeler.callable {ref!r} is neither callable nor has preference/score methods")

    def first_preferred(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[str | None]]:
        if self.preference_fn is None:
            raise NotImplementedError(f"{self.name} has no preference function (only a score)")
        fn = self.preference_fn
        return [_clip(fn(p, a, b), 0.0, 1.0) for p, a, b in zip(prompts, first, second, strict=True)], [
            None
        ] * len(prompts)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self.score_fn is None:
            raise NotImplementedError(
                f"{self.name} has no score function: attach one with rlaif_trainer.feedback.python.with_score, "
                "or give an object with a score(prompt, response) method"
            )
        fn = self.score_fn
        return [_clip(fn(p, r), -1.0, 1.0) for p, r in zip(prompts, responses, strict=True)]
