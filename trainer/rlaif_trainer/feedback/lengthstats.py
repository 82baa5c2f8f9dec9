"""Length-controlled win rate: the judge's outcome regressed on the response-length difference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Length-difference buckets (tokens, trained − initial): shorter, similar, longer.
BUCKET_EDGE = 5


def hard_outcomes(p: Sequence[float]) -> list[float]:
    """1 where the trained policy wins (p > 0.5), 0 where it loses, 0.5 on an exact tie."""
    return [1.0 if x > 0.5 else 0.0 if x < 0.5 else 0.5 for x in p]


def length_controlled(p: Sequence[float], length_diff: Sequence[float]) -> dict[str, Any]:
    """Win rate at equal length (OLS intercept of outcome on length difference) and by bucket.

    ``length_diff[i]`` is (trained − initial) response length in tokens for prompt ``i``.
    """
    import numpy as np

    y = np.asarray(hard_outcomes(p), dtype=float)
    x = np.asarray(length_diff, dtype=float)
    n = y.size
    out: dict[str, Any] = {
        "method": "OLS of the win (1/0.5/0) on the length difference (tokens, trained − initial); "
        "the intercept is the win rate at equal length",
        "mean_length_diff": float(x.mean()) if n else float("nan"),
    }
    if n >= 3 and float(x.var()) > 0:
        X = np.stack([np.ones(n), x], axis=1)
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        dof = n - 2
        sigma2 = float(resid @ resid) / dof
        cov = sigma2 * np.linalg.inv(X.T @ X)
        se_a = math.sqrt(max(cov[0, 0], 0.0))
        se_b = math.sqrt(max(cov[1, 1], 0.0))
        a, b = float(beta[0]), float(beta[1])
        out.update(
            win_rate_at_equal_length=a,
            win_rate_at_equal_length_ci95=[a - 1.96 * se_a, a + 1.96 * se_a],
            slope_per_token=b,
            slope_per_token_ci95=[b - 1.96 * se_b, b + 1.96 * se_b],
        )
    else:
        # No spread in lengths: nothing to regress out.
        wr = float(y.mean()) if n else float("nan")
        se = float(y.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        out.update(
            win_rate_at_equal_length=wr,
            win_rate_at_equal_length_ci95=[wr - 1.96 * se, wr + 1.96 * se],
            slope_per_token=None,
            slope_per_token_ci95=None,
        )
    buckets = []
    for name, sel in (
        (f"trained shorter by >= {BUCKET_EDGE}", x <= -BUCKET_EDGE),
        (f"within {BUCKET_EDGE - 1} tokens", np.abs(x) < BUCKET_EDGE),
        (f"trained longer by >= {BUCKET_EDGE}", x >= BUCKET_EDGE),
    ):
        k = int(sel.sum())
        buckets.append({"bucket": name, "n": k, "win_rate": float(y[sel].mean()) if k else None})
    out["buckets"] = buckets
    return out
