"""AI labelers: who says which response is better (Lee et al. 2023, §2.1).

Every labeler implements the :class:`Labeler` protocol:

``preference(prompts, responses_a, responses_b) -> list[PreferenceResult]``
    ``p_a`` is the probability that A is preferred (the *soft label*), position-debiased when
    ``position_debias`` is on: the pair is judged with A shown first (``p_a_ab``) and with A shown
    second (``p_a_ba``), and the two are averaged. ``consistent`` says whether both orders picked
    the same response.

``score(prompts, responses) -> list[float]``
    A direct reward in [-1, 1] (d-RLAIF, §2.3): for pairwise labelers the probability-weighted
    1-10 score of :mod:`rlaif_trainer.feedback.scoring`; for pointwise labelers the mean over principles
    of ``2·P(Yes | Yes or No) - 1``.

Modes
-----
``pairwise``: the paper's prompt; the soft label is the softmax over the log-probabilities of the
tokens "1" and "2" after ``Preferred Response=``.

``pointwise`` (RLBFF-style binary principles): each response is judged alone against each yes/no
principle; its log-odds are ``log P("Yes") - log P("No")``; the pair's soft label is
``mean_k sigmoid(logodds_k(a) - logodds_k(b))``. Swapping a and b gives exactly ``1 - p_a``: no
position bias by construction, so both per-order values equal ``p_a`` and ``consistent`` is true.

Providers (``build_labeler``)
-----------------------------
* ``hf``: a local causal LM (:mod:`.hf`), batched, with the shared preamble's KV cache reused;
* ``openai``: an OpenAI-compatible completions or chat-completions endpoint with logprobs (:mod:`.openai`);
* ``python``: a Python callable (:mod:`.python`), e.g. :func:`rlaif_trainer.feedback.rules.prefer_shorter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlaif_api.contract import ENV_JUDGE_API_KEY, ENV_LABELER_API_KEY

__all__ = [
    "API_KEY_ENV",
    "JUDGE_API_KEY_ENV",
    "InputTooLongError",
    "Labeler",
    "LabelerError",
    "PairwiseLabelerBase",
    "PointwiseLabelerBase",
    "PreferenceResult",
    "combine_orders",
    "sigmoid",
]

#: Environment variable the operator sets from ``labeler.apiKeySecretRef`` (the key is never logged).
API_KEY_ENV = ENV_LABELER_API_KEY
#: The same for ``evaluation.judge.apiKeySecretRef``.
JUDGE_API_KEY_ENV = ENV_JUDGE_API_KEY


class LabelerError(RuntimeError):
    """The labeler could not produce a label (e.g. an endpoint kept failing)."""


class InputTooLongError(ValueError):
    """Item ``index`` of the last call does not fit the labeler's context."""

    def __init__(self, index: int, n_tokens: int, limit: int) -> None:
        super().__init__(f"item {index}: {n_tokens} tokens exceed the labeler's context of {limit}")
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass
class PreferenceResult:
    """One judged pair. Probabilities are that A (``response_a``) is preferred."""

    p_a: float
    p_a_ab: float
    p_a_ba: float | None = None
    consistent: bool | None = None
    rationale_ab: str | None = None
    rationale_ba: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        """|p_a − 0.5| · 2, in [0, 1]."""
        return abs(self.p_a - 0.5) * 2.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}


def combine_orders(p_first_ab: float, p_first_ba: float | None) -> PreferenceResult:
    """Debias: ``p_first_ab`` = P(first preferred) with A first; ``p_first_ba`` = the same with B first."""
    p_a_ab = float(p_first_ab)
    if p_first_ba is None:
        return PreferenceResult(p_a=p_a_ab, p_a_ab=p_a_ab)
    p_a_ba = 1.0 - float(p_first_ba)
    consistent = (p_a_ab > 0.5) == (p_a_ba > 0.5) and p_a_ab != 0.5 and p_a_ba != 0.5
    return PreferenceResult(p_a=0.5 * (p_a_ab + p_a_ba), p_a_ab=p_a_ab, p_a_ba=p_a_ba, consistent=consistent)


@runtime_checkable
class Labeler(Protocol):
    mode: str

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[PreferenceResult]: ...

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


def _check_lengths(*seqs: Sequence[Any]) -> int:
    n = len(seqs[0])
    for s in seqs[1:]:
        if len(s) != n:
            raise ValueError(f"length mismatch: {[len(x) for x in seqs]}")
    return n


class PairwiseLabelerBase:
    """Shared debiasing logic. Subclasses implement :meth:`first_preferred`."""

    mode = "pairwise"

    def __init__(self, *, position_debias: bool = True) -> None:
        self.position_debias = position_debias

    def first_preferred(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[str | None]]:
        """P(the response shown first is preferred), and the rationale if any, per item."""
        raise NotImplementedError

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[PreferenceResult]:
        n = _check_lengths(prompts, responses_a, responses_b)
        if n == 0:
            return []
        if self.position_debias:
            # One call for both orders, so batching covers all of them.
            probs, rats = self.first_preferred(
                list(prompts) + list(prompts),
                list(responses_a) + list(responses_b),
                list(responses_b) + list(responses_a),
            )
            out = []
            for i in range(n):
                r = combine_orders(probs[i], probs[n + i])
                r.rationale_ab, r.rationale_ba = rats[i], rats[n + i]
                out.append(r)
            return out
        probs, rats = self.first_preferred(prompts, responses_a, responses_b)
        out = []
        for i in range(n):
            r = combine_orders(probs[i], None)
            r.rationale_ab = rats[i]
            out.append(r)
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} has no direct score")


class PointwiseLabelerBase:
    """Shared pointwise logic. Subclasses implement :meth:`logodds`."""

    mode = "pointwise"

    def __init__(self, principles: Sequence[str]) -> None:
        if not principles:
            raise ValueError("pointwise mode needs at least one yes/no principle")
        self.principles = list(principles)

    def logodds(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """``log P(Yes) − log P(No)`` per response, per principle."""
        raise NotImplementedError

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[PreferenceResult]:
        n = _check_lengths(prompts, responses_a, responses_b)
        if n == 0:
            return []
        # Score each distinct (prompt, response) once.
        keys: dict[tuple[str, str], int] = {}
        for p, r in [*zip(prompts, responses_a, strict=True), *zip(prompts, responses_b, strict=True)]:
            keys.setdefault((p, r), len(keys))
        uniq = list(keys)
        lo = self.logodds([k[0] for k in uniq], [k[1] for k in uniq])
        out = []
        for p, a, b in zip(prompts, responses_a, responses_b, strict=True):
            la, lb = lo[keys[(p, a)]], lo[keys[(p, b)]]
            per = [sigmoid(x - y) for x, y in zip(la, lb, strict=True)]
            p_a = sum(per) / len(per)
            out.append(
                PreferenceResult(
                    p_a=p_a,
                    p_a_ab=p_a,
                    p_a_ba=p_a,
                    consistent=True,
                    details={"logodds_a": [round(x, 5) for x in la], "logodds_b": [round(x, 5) for x in lb]},
                )
            )
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Mean over principles of ``2·P(Yes | Yes or No) − 1``, in [-1, 1]."""
        _check_lengths(prompts, responses)
        if not len(prompts):
            return []
        lo = self.logodds(prompts, responses)
        return [sum(2.0 * sigmoid(x) - 1.0 for x in row) / len(row) for row in lo]
