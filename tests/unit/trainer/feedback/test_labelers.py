"""The python provider, the rule-based labelers, build_labeler, and the judge's win rate."""

from __future__ import annotations

import sys
import types

import pytest

from rlaif_api import LabelerSpec
from rlaif_trainer.feedback.base import Labeler
from rlaif_trainer.feedback.build import build_labeler
from rlaif_trainer.feedback.python import PythonLabeler
from rlaif_trainer.feedback.rules import brevity_score, prefer_shorter
from rlaif_trainer.feedback.winrate import wilson_interval, win_rate_from_probs


def test_prefer_shorter_through_build_labeler():
    lab = build_labeler(
        LabelerSpec(provider="python", callable="rlaif_trainer.feedback.rules:prefer_shorter")
    )
    assert isinstance(lab, Labeler)
    res = lab.preference(["p", "p"], ["one two", "a b c d e f g h"], ["one two three four five six", "x"])
    assert res[0].p_a > 0.5 and res[1].p_a < 0.5
    assert all(r.consistent for r in res)
    # order-independent rule: debiasing changes nothing
    assert res[0].p_a == pytest.approx(prefer_shorter("p", "one two", "one two three four five six"))
    s = lab.score(["p", "p"], ["short", " ".join(["w"] * 40)])
    assert s[0] > 0 > s[1] and all(-1 <= x <= 1 for x in s)
    assert s[0] == pytest.approx(brevity_score("p", "short"))


def test_python_labeler_objects_classes_and_errors(monkeypatch):
    mod = types.ModuleType("my_rules")

    class Judge:
        def preference(self, prompt, a, b):
            return 0.9 if "good" in a else 0.1

        def score(self, prompt, response):
            return 3.0  # out of range: clipped

    def order_biased(prompt, a, b):  # always prefers whatever is shown first
        return 0.8

    mod.Judge = Judge
    mod.order_biased = order_biased
    mod.not_callable = 42
    monkeypatch.setitem(sys.modules, "my_rules", mod)

    lab = PythonLabeler.from_spec("my_rules:Judge")
    assert lab.preference(["p"], ["good"], ["bad"])[0].p_a == pytest.approx(0.9)
    assert lab.score(["p"], ["x"]) == [1.0]

    biased = PythonLabeler.from_spec("my_rules:order_biased")
    r = biased.preference(["p"], ["a"], ["b"])[0]
    assert r.p_a == pytest.approx(0.5) and r.consistent is False
    with pytest.raises(NotImplementedError, match="no score function"):
        biased.score(["p"], ["a"])
    with pytest.raises(ValueError, match="neither callable"):
        PythonLabeler.from_spec("my_rules:not_callable")
    with pytest.raises(ValueError, match="no attribute"):
        PythonLabeler.from_spec("my_rules:missing")
    with pytest.raises(ValueError, match="cannot import"):
        PythonLabeler.from_spec("no_such_module_xyz:f")


def test_wilson_interval_and_win_rate_stats():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    s = win_rate_from_probs([0.9, 0.8, 0.5, 0.2])
    assert s["wins"] == 2 and s["losses"] == 1 and s["ties"] == 1
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert s["soft_win_rate"] == pytest.approx(0.6)
    assert s["win_rate_ci95"][0] < s["win_rate"] < s["win_rate_ci95"][1]


def test_build_labeler_hf_reuses_the_given_model(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = build_labeler(
        LabelerSpec(provider="hf", model="unused", mode="pointwise", principles=["Relevant?"]),
        model=model,
        tokenizer=tok,
    )
    assert lab.mode == "pointwise" and lab.scorer.model is model
    lab2 = build_labeler(
        LabelerSpec(provider="hf", model="unused", preamble="detailed"), model=model, tokenizer=tok
    )
    assert lab2.mode == "pairwise" and "Relevance" in lab2.head
