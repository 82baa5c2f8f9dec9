"""Labeler calibration against human preferences (issue 13): alignment, position-bias rate, mean
confidence, by flaw and by principle; in the label stage's summary and as ``rlaif-train calibrate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif_trainer import cli
from rlaif_trainer.feedback import calibration as label
from rlaif_trainer.feedback.base import PairwiseLabelerBase, PointwiseLabelerBase

REPO = Path(__file__).resolve().parents[4]
SHIPPED = REPO / "examples" / "data" / "quickstart_calibration_pairs.jsonl"


class FirstWins(PairwiseLabelerBase):
    """Always prefers the response shown first, with P 0.8: pure position bias."""

    def first_preferred(self, prompts, first, second):
        return [0.8] * len(prompts), [None] * len(prompts)


class Shorter(PointwiseLabelerBase):
    """Two principles: 'short' (log-odds falls with length) and 'noise' (constant)."""

    def __init__(self):
        super().__init__(["short", "noise"])

    def logodds(self, prompts, responses):
        return [[-0.1 * len(r.split()), 0.0] for r in responses]


PAIRS = [
    {
        "id": "1",
        "prompt": "p",
        "response_a": "short one",
        "response_b": "a much longer response here",
        "p_a": 1.0,
        "flaw": "too_long",
    },
    {
        "id": "2",
        "prompt": "p",
        "response_a": "a much longer response here",
        "response_b": "tiny",
        "p_a": 0.0,
        "flaw": "too_long",
    },
    {
        "id": "3",
        "prompt": "p",
        "response_a": "cut",
        "response_b": "a complete answer",
        "p_a": 0.0,
        "flaw": "truncated",
    },
    {"id": "4", "prompt": "p", "response_a": "same", "response_b": "same", "p_a": 1.0, "flaw": "copies_post"},
]


def test_a_position_biased_pairwise_labeler_is_at_chance_with_full_bias():
    report, records = label.calibrate(FirstWins(position_debias=True), PAIRS)
    assert report["position_bias_rate"] == 1.0  # the first response wins in both orders, every time
    assert report["alignment"] == 0.5  # debiased: every p_a is exactly 0.5, each a tie, half right
    assert report["mean_confidence"] == 0.0
    assert len(records) == 4 and all(r["agrees"] == 0.5 for r in records)


def test_a_non_debiasing_pairwise_labeler_is_still_judged_in_both_orders():
    report, _ = label.calibrate(FirstWins(position_debias=False), PAIRS)
    assert report["position_bias_rate"] == 1.0


def test_pointwise_alignment_by_flaw_and_by_principle():
    report, _ = label.calibrate(Shorter(), PAIRS)
    # 'short' prefers the shorter: right on pairs 1 and 2, wrong on 3, a tie on 4 (same text).
    assert report["alignment"] == pytest.approx(2.5 / 4)
    assert report["alignment_by_principle"]["short"] == pytest.approx(2.5 / 4)
    assert report["alignment_by_principle"]["noise"] == pytest.approx(0.5)  # every pair a tie
    assert report["alignment_by_flaw"] == {"copies_post": 0.5, "too_long": 1.0, "truncated": 0.0}
    assert report["position_bias_rate"] is None  # pointwise: none by construction, not a measurement
    lo, hi = report["alignment_ci95"]
    assert 0 <= lo <= report["alignment"] <= hi <= 1
    assert {"calibration_alignment", "calibration_position_bias_rate", "calibration_mean_confidence"} <= set(
        label.calibration_summary(report)
    )


def test_the_shipped_calibration_set_is_hand_labelled_and_varied():
    from rlaif_trainer.data.records import read_pairs

    pairs = read_pairs(SHIPPED, require_label=True)
    raw = [json.loads(x) for x in SHIPPED.read_text().splitlines()]
    assert len(pairs) >= 40 and {p["p_a"] for p in pairs} == {0.0, 1.0}
    flaws = {r["flaw"] for r in raw}
    assert {"off_topic", "wrong_facts", "too_long", "truncated", "copies_post"} <= flaws
    # Both positions hold the better summary, so a position-biased labeler cannot score well.
    assert 0.3 < sum(p["p_a"] for p in pairs) / len(pairs) < 0.7


def test_calibrate_cli_reports_on_the_shipped_pairs_with_a_rule_labeler(tmp_path: Path, capsys):
    job = {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "metadata": {"name": "cal"},
        "spec": {
            "policy": {"model": "embedded:smollm2-135m-instruct"},
            "dataset": {
                "prompts": str(REPO / "examples/data/quickstart_prompts.jsonl"),
                "calibrationPairs": str(SHIPPED),
            },
            "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    assert cli.main(["calibrate", str(path), "--json", "--out", str(tmp_path / "cal.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] >= 40 and report["labeler"] == "python:rlaif_trainer.feedback.rules:prefer_shorter"
    # Preferring the shorter summary gets "too long" and "copies the post" right and "truncated" wrong.
    assert report["alignment_by_flaw"]["too_long"] == 1.0 and report["alignment_by_flaw"]["truncated"] == 0.0
    assert len((tmp_path / "cal.jsonl").read_text().splitlines()) == report["pairs"]


@pytest.mark.parametrize(
    ("dataset", "extra_args", "named"),
    [
        ({"prompts": "p.jsonl"}, [], "calibrationPairs"),
        # The information term reads an hf model's log-likelihoods: a rule labeler has none.
        (
            {"prompts": "p.jsonl", "calibrationPairs": str(SHIPPED)},
            ["--information-weight", "2"],
            "--information-weight",
        ),
    ],
    ids=["without-pairs", "information-weight-on-a-python-labeler"],
)
def test_calibrate_cli_bad_input_names_what_is_wrong(tmp_path: Path, capsys, dataset, extra_args, named):
    path = tmp_path / "job.yaml"
    path.write_text(
        json.dumps(
            {
                "metadata": {"name": "cal"},
                "spec": {
                    "policy": {"model": "m"},
                    "dataset": dataset,
                    "labeler": {
                        "provider": "python",
                        "callable": "rlaif_trainer.feedback.rules:prefer_shorter",
                    },
                },
            }
        )
    )
    assert cli.main(["calibrate", str(path), *extra_args]) == 65
    assert named in capsys.readouterr().err
