"""The evaluate stage: length-controlled win rate by hand, and the stage end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlaif_api import RLAIFJob, resolve_stage_configs  # noqa: E402
from rlaif_trainer.feedback.lengthstats import hard_outcomes, length_controlled  # noqa: E402

PROMPTS = [
    f"Summarize: item {i} of the list is about the river, the park and the city council." for i in range(12)
]


def test_hard_outcomes_count_ties_as_half():
    assert hard_outcomes([0.9, 0.1, 0.5, 0.5000001]) == [1.0, 0.0, 0.5, 1.0]


def test_length_controlled_regression_by_hand():
    # Wins exactly when the trained response is longer: y = 1 for diff > 0, 0 otherwise.
    p = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3]
    diff = [10, 10, 10, -10, -10, -10]
    lc = length_controlled(p, diff)
    # OLS of y on diff: intercept = mean(y) - b * mean(diff) = 0.5 ; slope = cov / var = 5 / 100
    assert lc["win_rate_at_equal_length"] == pytest.approx(0.5)
    assert lc["slope_per_token"] == pytest.approx(0.05)
    # Perfect fit: zero residuals, so the interval collapses onto the estimate.
    lo, hi = lc["win_rate_at_equal_length_ci95"]
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    buckets = {b["bucket"]: b for b in lc["buckets"]}
    assert [b["n"] for b in lc["buckets"]] == [3, 0, 3]
    assert buckets["trained longer by >= 5"]["win_rate"] == 1.0
    assert buckets["trained shorter by >= 5"]["win_rate"] == 0.0


def test_length_controlled_with_an_uneven_design():
    p = [1.0, 1.0, 0.0, 1.0, 0.0]
    diff = [0.0, 2.0, 0.0, 4.0, -2.0]
    lc = length_controlled(p, diff)
    import numpy as np

    X = np.stack([np.ones(5), np.array(diff)], axis=1)
    beta = np.linalg.solve(X.T @ X, X.T @ np.array([1.0, 1.0, 0.0, 1.0, 0.0]))
    assert lc["win_rate_at_equal_length"] == pytest.approx(beta[0])
    assert lc["slope_per_token"] == pytest.approx(beta[1])
    assert lc["win_rate_at_equal_length_ci95"][0] < beta[0] < lc["win_rate_at_equal_length_ci95"][1]


def test_length_controlled_without_length_spread_falls_back_to_the_plain_rate():
    lc = length_controlled([0.9, 0.2, 0.7, 0.6], [3, 3, 3, 3])
    assert lc["win_rate_at_equal_length"] == pytest.approx(0.75)
    assert lc["slope_per_token"] is None


def _config(tmp_path: Path, model_dir: Path, *, judge: str = "prefer_shorter"):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "evaltest"},
            "spec": {
                "policy": {"model": str(model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "dataset": {"prompts": str(prompts), "evalPrompts": str(prompts)},
                "labeler": {"provider": "python", "callable": f"rlaif_trainer.feedback.rules:{judge}"},
                "rl": {"maxNewTokens": 12},
                "evaluation": {"samples": 10, "policy": str(tmp_path / "policy")},
                "stages": ["evaluate"],
                "seed": 5,
            },
        }
    )
    return resolve_stage_configs(job, tmp_path / "ws")["evaluate"]


def _save_adapter(tmp_path: Path, model_dir: Path, *, perturb: bool) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g))
    out = tmp_path / "policy"
    model.save_pretrained(out / "adapter")
    rows = [
        {"step": i + 1, "reward": 0.1 * i, "kl": 0.01 * i, "response_length": 10 - i, "kl_estimator": "k1"}
        for i in range(12)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "policy.json").write_text(json.dumps({"algorithm": "rloo"}))
    return out


def test_an_untrained_adapter_ties_with_the_initial_policy(tmp_path, tiny_model_dir, monkeypatch):
    """Zero LoRA deltas + common random numbers: identical responses, every pair a tie, win rate 0.5."""
    from rlaif_trainer.stages.evaluate import run

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    _save_adapter(tmp_path, tiny_model_dir, perturb=False)
    cfg = _config(tmp_path, tiny_model_dir)
    summary = run(cfg, progress=False)
    out = Path(cfg.artifacts.eval)
    report = json.loads((out / "report.json").read_text())
    assert report["identical_responses"] == 10
    assert summary["ties"] == 10 and summary["win_rate_vs_initial"] == 0.5
    assert summary["win_rate_ci_low"] < 0.5 < summary["win_rate_ci_high"]
    assert json.loads((out / "DONE").read_text())["win_rate_vs_initial"] == 0.5


def test_evaluate_writes_report_samples_and_plot(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif_trainer.feedback.rules import prefer_shorter
    from rlaif_trainer.stages.evaluate import run

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    _save_adapter(tmp_path, tiny_model_dir, perturb=True)
    cfg = _config(tmp_path, tiny_model_dir)
    summary = run(cfg, progress=False)
    out = Path(cfg.artifacts.eval)
    for name in ("report.json", "samples.jsonl", "training_curves.png", "summary.json", "DONE"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == report["prompts"] == 10
    # The judge's numbers are recomputable from the samples.
    for s in samples:
        assert s["p_trained"] == pytest.approx(prefer_shorter(s["prompt"], s["trained"], s["initial"]))
    wins = sum(1 for s in samples if s["p_trained"] > 0.5) + 0.5 * sum(
        1 for s in samples if s["p_trained"] == 0.5
    )
    assert report["win_rate"] == pytest.approx(wins / 10)
    assert report["win_rate_ci95"][0] <= report["win_rate"] <= report["win_rate_ci95"][1]
    assert report["identical_responses"] < 10  # the perturbed adapter changes the policy
    assert report["rl_algorithm"] == "rloo" and report["plot"] == "training_curves.png"
    assert {"win_rate_at_equal_length", "buckets", "slope_per_token"} <= set(report["length_controlled"])
    assert len(json.dumps(summary)) < 4096
    again = run(cfg, progress=False)
    assert again["resumed"] is True and again["win_rate_vs_initial"] == summary["win_rate_vs_initial"]
