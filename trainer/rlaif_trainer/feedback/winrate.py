"""Win-rate statistics of the AI judge (paper §3.3, "AI labeler as judge").

The evaluate stage judges every held-out prompt's pair with the trained policy's response as A and
the initial policy's as B (a pairwise judge with ``position_debias`` scores both orders and
averages, so neither side gains from being shown first), and :func:`win_rate_from_probs` turns the
per-prompt ``p_a`` into::

    {"n": 200,
     "win_rate": 0.61,  "win_rate_ci95": [0.54, 0.67],     # hard: p_a > 0.5 wins, p_a == 0.5 counts half;
                                                              # Wilson score interval
     "soft_win_rate": 0.55, "soft_win_rate_ci95": [...],    # mean of p_a; normal interval
     "wins": 120, "losses": 76, "ties": 4,
     "consistency_rate": 0.7}                               # pairs judged the same way in both orders
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["wilson_interval", "win_rate_from_probs"]

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (``successes`` may be fractional, for ties)."""
    if n <= 0:
        return (0.0, 1.0)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate_from_probs(
    p: Sequence[float], consistent: Sequence[bool | None] | None = None
) -> dict[str, Any]:
    n = len(p)
    if n == 0:
        raise ValueError("no judged pairs")
    wins = sum(1 for x in p if x > 0.5)
    losses = sum(1 for x in p if x < 0.5)
    ties = n - wins - losses
    hard = (wins + 0.5 * ties) / n
    soft = sum(p) / n
    var = sum((x - soft) ** 2 for x in p) / (n - 1) if n > 1 else 0.25
    half = Z95 * math.sqrt(var / n)
    out: dict[str, Any] = {
        "n": n,
        "win_rate": hard,
        "win_rate_ci95": list(wilson_interval(wins + 0.5 * ties, n)),
        "soft_win_rate": soft,
        "soft_win_rate_ci95": [max(0.0, soft - half), min(1.0, soft + half)],
        "wins": wins,
        "losses": losses,
        "ties": ties,
    }
    known = [c for c in (consistent or []) if c is not None]
    out["consistency_rate"] = sum(known) / len(known) if known else None
    return out
