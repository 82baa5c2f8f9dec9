"""Statistics of the evaluate stage (numpy only, tested against hand computations).

Every comparison is *paired by prompt*: each held-out prompt gets ``K`` samples from each policy,
sample ``j`` of both drawn with the same seed (common random numbers), and a per-prompt figure is
the mean over its ``K`` samples. The prompt is the unit of the tests, since samples of one prompt are
not independent of each other.

* :func:`paired_test`: the mean per-prompt difference, a percentile bootstrap 95% interval over
  prompts, and a two-sided sign-flip (paired randomisation) p-value: under the null of no
  difference each prompt's difference is as likely to have either sign. Exact over all ``2^n``
  sign patterns up to ``n = 16``, else from seeded random patterns (with the ``+1`` correction,
  so a p-value is never 0).
* :func:`length_controlled_win_rate`: AlpacaEval's length-controlled GLM for one pair of
  policies: ``logit P(trained preferred) = a + b·tanh(Δlen / s)``, fitted to the *soft* preferences
  by maximum likelihood (Newton steps on the cross-entropy); ``Δlen`` is the trained minus the
  initial response's length in tokens and ``s`` its standard deviation. The length term is bounded
  (tanh), so no length difference can move the odds by more than ``e^|b|``, and the win rate at
  equal length is ``sigmoid(a)``; its interval comes from a bootstrap over prompts and stays in
  [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "cluster_win_rate",
    "hard_outcomes",
    "length_controlled_win_rate",
    "paired_gain",
    "paired_test",
    "per_prompt_means",
]

#: Exact sign-flip enumeration up to this many prompts (2^16 patterns); random patterns above.
EXACT_MAX_N = 16


def hard_outcomes(p: Sequence[float]) -> list[float]:
    """1 where the trained policy wins (p > 0.5), 0 where it loses, 0.5 on an exact tie."""
    return [1.0 if x > 0.5 else 0.0 if x < 0.5 else 0.5 for x in p]


def per_prompt_means(values: Sequence[float], k: int) -> list[float]:
    """Means over consecutive groups of ``k`` (the ``k`` samples of each prompt, in prompt order)."""
    if k < 1 or len(values) % k:
        raise ValueError(f"{len(values)} values do not split into groups of {k}")
    return [sum(values[i : i + k]) / k for i in range(0, len(values), k)]


def paired_gain(
    trained: Sequence[float], initial: Sequence[float], k: int, *, seed: int = 0
) -> dict[str, Any]:
    """Per-row scores of the trained and the initial policy (``k`` samples per prompt, prompt-major)
    as one paired comparison over prompts: both means, and :func:`paired_test` of the per-prompt
    differences."""
    diff = [a - b for a, b in zip(per_prompt_means(trained, k), per_prompt_means(initial, k), strict=True)]
    return {
        "initial": sum(initial) / len(initial),
        "trained": sum(trained) / len(trained),
        **paired_test(diff, seed=seed),
    }


def paired_test(
    diff: Sequence[float], *, n_boot: int = 10_000, n_perm: int = 20_000, seed: int = 0
) -> dict[str, Any]:
    """Mean of the per-prompt differences with a bootstrap 95% interval and a sign-flip p-value."""
    import numpy as np

    d = np.asarray(diff, dtype=float)
    n = int(d.size)
    if n == 0:
        raise ValueError("no paired differences")
    rng = np.random.default_rng(seed)
    mean = float(d.mean())
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    if n <= EXACT_MAX_N:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        null = (signs * d).mean(axis=1)
        # The observed pattern is one of the 2^n: the count includes it, so p >= 2^-n.
        p = float(np.mean(np.abs(null) >= abs(mean) - 1e-12))
    else:
        signs = rng.choice([-1.0, 1.0], size=(n_perm, n))
        null = (signs * d).mean(axis=1)
        p = float((np.sum(np.abs(null) >= abs(mean) - 1e-12) + 1) / (n_perm + 1))
    return {
        "mean_diff": mean,
        "ci95": [lo, hi],
        "p_value": p,
        "n_prompts": n,
        "method": "per-prompt paired differences; percentile bootstrap over prompts; two-sided sign-flip test",
    }


def cluster_win_rate(p: Sequence[float], k: int, *, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Hard and soft win rates over ``k`` judged pairs per prompt, with bootstrap intervals over prompts.

    Hard: ``p > 0.5`` wins, ``p < 0.5`` loses, an exact 0.5 counts half. The intervals resample
    prompts (with all their samples), so correlated samples of one prompt do not narrow them.
    """
    import numpy as np

    hard = hard_outcomes(p)
    h = np.asarray(per_prompt_means(hard, k))
    s = np.asarray(per_prompt_means(list(p), k))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, h.size, size=(n_boot, h.size))
    h_lo, h_hi = (float(x) for x in np.percentile(h[idx].mean(axis=1), [2.5, 97.5]))
    s_lo, s_hi = (float(x) for x in np.percentile(s[idx].mean(axis=1), [2.5, 97.5]))
    return {
        "n_pairs": len(p),
        "n_prompts": int(h.size),
        "win_rate": float(h.mean()),
        "win_rate_ci95": [h_lo, h_hi],
        "soft_win_rate": float(s.mean()),
        "soft_win_rate_ci95": [s_lo, s_hi],
        "wins": sum(1 for x in p if x > 0.5),
        "losses": sum(1 for x in p if x < 0.5),
        "ties": sum(1 for x in p if x == 0.5),
        "soft_vs_half": paired_test([x - 0.5 for x in s.tolist()], seed=seed),
    }


def _fit_logistic(p: Any, z: Any, ridge: float = 1e-6) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``logit q = a + b·z`` for soft targets ``p`` (Newton steps)."""
    import numpy as np

    X = np.stack([np.ones_like(z), z], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - q) - ridge * w
        hess = (X * (q * (1.0 - q))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # Soft targets of all 0 or all 1 have no finite optimum: cap the logits.
        w = np.clip(w + step, -30.0, 30.0)
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


def length_controlled_win_rate(
    p: Sequence[float], length_diff: Sequence[float], *, groups: int = 1, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The win rate at equal length from AlpacaEval's length-controlled GLM (see the module docstring).

    ``groups`` consecutive items belong to one prompt; the bootstrap resamples whole prompts.
    """
    import numpy as np

    y = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    x = np.asarray(length_diff, dtype=float)
    n = y.size
    scale = float(x.std())
    out: dict[str, Any] = {
        "method": "logistic GLM on the soft preference: logit p = a + b*tanh(length_diff/sd); "
        "win rate at equal length = sigmoid(a) (AlpacaEval length-controlled); bootstrap over prompts",
        "mean_length_diff": float(x.mean()) if n else float("nan"),
        "length_scale_tokens": scale,
    }
    z = np.tanh(x / scale) if scale > 0 else np.zeros_like(x)
    a, b = _fit_logistic(y, z)
    out["win_rate_at_equal_length"] = 1.0 / (1.0 + math.exp(-a))
    out["length_coef"] = b if scale > 0 else None
    rng = np.random.default_rng(seed)
    n_prompts = n // groups
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, n_prompts, n_prompts)
        idx = (pick[:, None] * groups + np.arange(groups)[None, :]).reshape(-1)
        boots.append(1.0 / (1.0 + math.exp(-_fit_logistic(y[idx], z[idx])[0])))
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    out["win_rate_at_equal_length_ci95"] = [lo, hi]
    return out
