"""The evaluate stage's statistics by hand: paired sign-flip test, cluster win rate, logistic length control."""

from __future__ import annotations

import itertools
import math

import pytest

from rlaif_trainer.feedback.evalstats import (
    cluster_win_rate,
    length_controlled_win_rate,
    paired_test,
    per_prompt_means,
)


def test_per_prompt_means_groups_consecutive_samples():
    assert per_prompt_means([1, 3, 2, 4, 0, 0], 2) == [2, 3, 0]
    with pytest.raises(ValueError):
        per_prompt_means([1, 2, 3], 2)


def test_exact_sign_flip_p_value_by_enumeration():
    d = [0.3, 0.1, -0.05, 0.2, 0.25]
    obs = sum(d) / len(d)
    count = sum(
        1
        for s in itertools.product([-1, 1], repeat=5)
        if abs(sum(x * y for x, y in zip(s, d, strict=True)) / 5) >= obs - 1e-12
    )
    r = paired_test(d)
    assert r["p_value"] == pytest.approx(count / 32)
    assert r["mean_diff"] == pytest.approx(obs) and r["n_prompts"] == 5
    assert r["ci95"][0] <= obs <= r["ci95"][1]


def test_a_consistent_gain_is_significant_and_noise_is_not():
    gain = paired_test([0.1 + 0.01 * (i % 3) for i in range(30)])
    assert gain["p_value"] < 0.001 and gain["ci95"][0] > 0
    noise = paired_test([(-1) ** i * 0.1 for i in range(30)])
    assert noise["p_value"] > 0.5 and noise["ci95"][0] < 0 < noise["ci95"][1]


def test_cluster_win_rate_counts_ties_half_and_resamples_prompts():
    p = [0.9, 0.5, 0.2, 0.6]  # two prompts x two samples
    r = cluster_win_rate(p, 2)
    assert r["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert (r["wins"], r["losses"], r["ties"]) == (2, 1, 1)
    assert r["soft_win_rate"] == pytest.approx(sum(p) / 4)
    # Two prompts with hard means 0.75 and 0.5: the bootstrap can only give 0.5, 0.625 or 0.75.
    assert r["win_rate_ci95"][0] >= 0.5 - 1e-9 and r["win_rate_ci95"][1] <= 0.75 + 1e-9


def test_length_control_removes_a_pure_length_effect():
    # The judge prefers the longer response and nothing else: at equal length it is a coin flip.
    diff = [(-1) ** i * (1 + i % 5) * 4.0 for i in range(40)]
    p = [1 / (1 + math.exp(-0.5 * d)) for d in diff]
    lc = length_controlled_win_rate(p, diff)
    assert lc["win_rate_at_equal_length"] == pytest.approx(0.5, abs=0.02)
    assert lc["length_coef"] > 1
    lo, hi = lc["win_rate_at_equal_length_ci95"]
    assert 0 <= lo <= 0.5 <= hi <= 1


def test_length_control_keeps_a_quality_effect_and_stays_in_the_unit_interval():
    diff = [0.0] * 10 + [5.0] * 10
    p = [0.99] * 20  # wins everywhere, whatever the length
    lc = length_controlled_win_rate(p, diff)
    assert lc["win_rate_at_equal_length"] > 0.95
    lo, hi = lc["win_rate_at_equal_length_ci95"]
    assert 0 <= lo <= hi <= 1
    flat = length_controlled_win_rate([0.7, 0.6, 0.8], [2, 2, 2])  # no length spread
    assert flat["win_rate_at_equal_length"] == pytest.approx(0.7, abs=1e-6) and flat["length_coef"] is None


def test_paired_gain_compares_per_prompt_means():
    from rlaif_trainer.feedback.evalstats import paired_gain

    # two prompts, two samples each (prompt-major): per-prompt means 1.5, 3.5 against 0, 1
    r = paired_gain([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], 2, seed=0)
    assert r["trained"] == 2.5 and r["initial"] == 0.5
    assert r["mean_diff"] == pytest.approx(2.0) and r["n_prompts"] == 2
    assert r == paired_gain([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], 2, seed=0)  # seeded
    with pytest.raises(ValueError, match="groups of 2"):
        paired_gain([1.0, 2.0, 3.0], [0.0, 0.0, 1.0], 2)
