"""The reward model's quality gate (issue 13): a zero score head, held-out accuracy with its Wilson
interval, exact ties counted as half, and a stage that fails with a reason the operator can show."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from rlaif_api.contract import EXIT_BAD_INPUT
from rlaif_api.summaries import RewardSummary
from rlaif_trainer import cli
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.winrate import wilson_interval
from rlaif_trainer.modeling.loading import load_reward_model
from rlaif_trainer.reward_model.batching import split_pairs
from rlaif_trainer.reward_model.scorer import score_texts
from rlaif_trainer.reward_model.training import train_reward_model, zero_score_head
from rlaif_trainer.stages import REGISTRY, reward
from rlaif_trainer.stages.reward import RewardModelGateError, gate_check

from ..conftest import make_stage_config, write_jsonl


def _pairs(n: int, *, learnable: bool = True) -> list[dict]:
    """``learnable``: "good" wins; otherwise the label is a coin flip unrelated to the text."""
    out = []
    for i in range(n):
        a_good = i % 2 == 1
        p_a = (0.9 if a_good else 0.1) if learnable else (0.9 if (i * 7919) % 5 < 2 else 0.1)
        out.append(
            {
                "id": f"x{i}",
                "prompt": f"question {i % 3}",
                "response_a": "good answer" if a_good else "bad",
                "response_b": "bad" if a_good else "good answer",
                "p_a": p_a,
            }
        )
    return out


def test_the_score_head_starts_at_zero_so_every_pair_ties(tiny_model_dir: Path):
    for lora in (None, _Lora()):
        torch.manual_seed(0)
        model, tok = load_reward_model(str(tiny_model_dir), device="cpu", dtype=torch.float32, lora=lora)
        assert zero_score_head(model) >= 1
        scores = score_texts(model, tok, ["q", "q"], ["good answer", "something else entirely"])
        assert scores == [0.0, 0.0]


class _Lora:
    r, alpha, dropout, target_modules = 4, 8, 0.0, ["q_proj", "v_proj"]


def test_an_exact_tie_counts_half_not_as_preferring_b(tiny_model_dir: Path):
    """A zero head ties every pair: accuracy must be 0.5 whichever side the labels prefer (the old
    count gave 1.0 when every label preferred B)."""
    model, tok = load_reward_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    zero_score_head(model)
    prefer_b = [{**p, "p_a": 0.1} for p in _pairs(6)]
    m = train_reward_model(
        model,
        tok,
        prefer_b[:2],
        prefer_b,
        epochs=1,
        learning_rate=1e-12,
        batch_size=2,
        max_length=32,
        progress=False,
    )
    assert m["accuracy"] == pytest.approx(0.5, abs=1e-6)


def test_the_split_holds_out_at_least_fifty_pairs_when_the_data_allows():
    pairs = [{"id": str(i)} for i in range(400)]
    assert len(split_pairs(pairs, 0.1, seed=0)[1]) == 50
    assert len(split_pairs(pairs, 0.25, seed=0)[1]) == 100
    assert len(split_pairs(pairs[:40], 0.1, seed=0)[1]) == 20  # fewer than 100: half
    assert split_pairs(pairs, 0.0, seed=0)[1] == []


def test_gate_check_uses_the_wilson_lower_bound():
    lo, hi = wilson_interval(0.7 * 50, 50)
    g = gate_check(0.7, 50, 0.5)
    assert g["accuracy_ci_low"] == pytest.approx(lo, abs=1e-4) and g["accuracy_ci_high"] == pytest.approx(
        hi, abs=1e-4
    )
    assert g["gate_passed"] is True and lo > 0.5
    assert gate_check(0.6, 50, 0.5)["gate_passed"] is False  # 0.6 on 50 pairs: the interval reaches 0.46
    assert gate_check(0.6, 50, 0.0)["gate_passed"] is True  # 0 turns the gate off
    assert gate_check(None, 0, 0.5)["gate_passed"] is False  # nothing held out: nothing shown


def _spec(tmp_path: Path, model_dir: Path, pairs: list[dict], **rm) -> dict:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}])
    write_jsonl(tmp_path / "labels.jsonl", pairs)
    return {
        "policy": {"model": str(model_dir)},
        "dataset": {"prompts": "prompts.jsonl", "labels": "labels.jsonl"},
        "rewardModel": {
            "epochs": 2,
            "learningRate": 3e-3,
            "batchSize": 4,
            "maxLength": 64,
            "evalFraction": 0.2,
            **rm,
        },
        "stages": ["reward"],
    }


def test_a_reward_model_that_learns_passes_the_gate(tmp_path: Path, tiny_model_dir: Path):
    cfg = make_stage_config(tmp_path, "reward", _spec(tmp_path, tiny_model_dir, _pairs(40)))
    summary = reward.run(cfg, progress=False)
    assert summary.eval_pairs == 20 and summary.gate_passed is True
    assert summary.accuracy_ci_low is not None and summary.accuracy_ci_low > 0.5
    assert summary.min_held_out_accuracy == 0.5
    assert (Path(cfg.artifacts.reward_model) / "DONE").is_file()


def test_labels_without_signal_fail_the_gate_and_leave_no_model(tmp_path: Path, tiny_model_dir: Path):
    cfg = make_stage_config(tmp_path, "reward", _spec(tmp_path, tiny_model_dir, _pairs(40, learnable=False)))
    with pytest.raises(RewardModelGateError, match=r"minHeldOutAccuracy=0.5") as info:
        reward.run(cfg, progress=False)
    assert isinstance(info.value, BadInputError) and info.value.reason == "RewardModelBelowGate"
    figures = info.value.summary
    assert (
        figures.gate_passed is False
        and figures.accuracy_ci_low is not None
        and figures.accuracy_ci_low <= 0.5
    )
    assert not (Path(cfg.artifacts.reward_model) / "DONE").exists()


def test_the_gate_failure_reaches_the_termination_log_with_its_reason(tmp_path: Path, monkeypatch):
    import dataclasses

    import rlaif_api as api
    from tests.api_cases import base_job

    module = types.ModuleType("gate_stage")

    def run(config, *, progress):
        raise RewardModelGateError(
            "held-out accuracy 0.520", RewardSummary(accuracy=0.52, accuracy_ci_low=0.38)
        )

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gate_stage", module)
    monkeypatch.setitem(REGISTRY, "reward", dataclasses.replace(REGISTRY["reward"], module="gate_stage"))
    job = api.RLAIFJob.model_validate(base_job("gate"))
    config = tmp_path / "reward.json"
    config.write_text(api.resolve_stage_configs(job, tmp_path / "ws")["reward"].to_json())
    log = tmp_path / "termination-log"
    code = cli.main(["reward", "--config", str(config), "--termination-log", str(log), "--no-progress"])
    assert code == EXIT_BAD_INPUT
    msg = json.loads(log.read_text())
    assert msg["reason"] == "RewardModelBelowGate" and msg["permanent"] is True
    assert msg["error"] == "held-out accuracy 0.520" and msg["accuracy_ci_low"] == 0.38
