"""The evaluate stage end to end on a tiny model: common random numbers, several samples per prompt,
the optimised reward, the judge and its A/A null, ROUGE-L against references (the statistics by hand
are in feedback/test_evalstats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlaif_api import RLAIFJob, resolve_stage_configs  # noqa: E402
from rlaif_trainer.feedback.evalstats import hard_outcomes  # noqa: E402
from rlaif_trainer.stages.evaluate import judge_is_reward_source  # noqa: E402

PROMPTS = [
    f"Summarize: item {i} of the list is about the river, the park and the city council." for i in range(12)
]


def test_hard_outcomes_count_ties_as_half():
    assert hard_outcomes([0.9, 0.1, 0.5, 0.5000001]) == [1.0, 0.0, 0.5, 1.0]


def _config(
    tmp_path: Path, model_dir: Path, *, judge: str = "prefer_shorter", k: int = 1, references: bool = False
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"e{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
    )
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        "".join(json.dumps({"id": f"e{i}", "reference": f"item {i} river park"}) + "\n" for i in range(12))
    )
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "evaltest"},
            "spec": {
                "policy": {"model": str(model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "dataset": {
                    "prompts": str(prompts),
                    "evalPrompts": str(prompts),
                    **({"evalReferences": str(refs)} if references else {}),
                },
                "labeler": {"provider": "python", "callable": f"rlaif_trainer.feedback.rules:{judge}"},
                "rl": {"maxNewTokens": 12, "reward": "direct"},
                "evaluation": {"samples": 10, "samplesPerPrompt": k, "policy": str(tmp_path / "policy")},
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
    assert summary.ties == 10 and summary.win_rate_vs_initial == 0.5
    assert summary.win_rate_ci_low is not None and summary.win_rate_ci_high is not None
    assert summary.win_rate_ci_low <= 0.5 <= summary.win_rate_ci_high
    assert json.loads((out / "DONE").read_text())["win_rate_vs_initial"] == 0.5
    # (a) the optimised reward is the same for identical responses: a gain of exactly 0, p = 1
    assert summary.reward_gain == 0.0 and summary.reward_gain_p_value == 1.0
    assert summary.judge_is_reward_source is True


def test_several_samples_references_and_the_a_a_null(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif_trainer.feedback.rules import brevity_score, prefer_shorter
    from rlaif_trainer.stages.evaluate import rouge_l, run

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    _save_adapter(tmp_path, tiny_model_dir, perturb=True)
    cfg = _config(tmp_path, tiny_model_dir, k=3, references=True)
    summary = run(cfg, progress=False)
    out = Path(cfg.artifacts.eval)
    report = json.loads((out / "report.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 30 and [s["sample"] for s in samples[:3]] == [0, 1, 2]
    assert summary.samples_per_prompt == 3 and summary.prompts == 10
    # Recomputable from the samples: the reward RL optimised (direct: the labeler's score), the
    # judge, and ROUGE-L against the references.
    for s in samples:
        assert s["reward_trained"] == pytest.approx(brevity_score(s["prompt"], s["trained"]))
        assert s["p_trained"] == pytest.approx(prefer_shorter(s["prompt"], s["trained"], s["initial"]))
    i = PROMPTS.index(samples[0]["prompt"])
    assert samples[0]["rouge_l_trained"] == pytest.approx(
        rouge_l([f"item {i} river park"], [samples[0]["trained"]])[0]
    )
    per_prompt = [
        sum(s["reward_trained"] - s["reward_initial"] for s in samples[j : j + 3]) / 3
        for j in range(0, 30, 3)
    ]
    assert report["reward"]["mean_diff"] == pytest.approx(sum(per_prompt) / 10)
    assert 0 < report["reward"]["p_value"] <= 1 and report["rouge_l"]["n_prompts"] == 10
    # The A/A null compares two samples of the initial policy: different responses, so not all ties.
    assert report["aa_null"]["pairs"] == 10  # disjoint pairs of the initial policy's samples: 0 v 1
    aa = summary.to_message()
    assert 0 <= aa["aa_win_rate_ci_low"] <= aa["aa_win_rate"] <= aa["aa_win_rate_ci_high"] <= 1
    assert report["judge_is_reward_source"] is True and "restates" in report["judge_note"]
    assert {"win_rate_at_equal_length", "length_coef"} <= set(report["length_controlled"])
    assert len(json.dumps(summary.to_message())) < 4096


def test_judge_is_reward_source_only_when_the_judge_is_the_labeler_rl_optimised(tmp_path, tiny_model_dir):
    spec = _config(tmp_path, tiny_model_dir).spec
    assert judge_is_reward_source(spec) is True
    other = spec.model_copy(deep=True)
    other.evaluation.judge = other.labeler.model_copy(
        update={"callable": "rlaif_trainer.feedback.rules:prefer_longer"}
    )
    assert judge_is_reward_source(other) is False
    given_rm = spec.model_copy(deep=True)
    given_rm.rl.reward = "rewardModel"
    given_rm.reward_model.path = "/models/rm"
    assert judge_is_reward_source(given_rm) is False


def test_missing_references_are_bad_input(tmp_path, tiny_model_dir):
    from rlaif_trainer.errors import BadInputError
    from rlaif_trainer.stages.evaluate import read_references

    refs = tmp_path / "r.jsonl"
    refs.write_text(json.dumps({"id": "a", "reference": "x"}) + "\n")
    with pytest.raises(BadInputError, match=r"no reference for 1 held-out prompt.*'b'"):
        read_references(str(refs), ["a", "b"])


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
    assert {"win_rate_at_equal_length", "length_coef"} <= set(report["length_controlled"])
    assert len(json.dumps(summary.to_message())) < 4096
    # summary.json and DONE hold the summary's one serialisation
    assert json.loads((out / "summary.json").read_text()) == summary.to_message()
    assert json.loads((out / "DONE").read_text()) == summary.to_message()
    again = run(cfg, progress=False)
    assert again.resumed is True and again.win_rate_vs_initial == summary.win_rate_vs_initial
