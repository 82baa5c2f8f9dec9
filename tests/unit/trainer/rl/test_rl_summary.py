"""The rl stage's headline (issue 13): initial and final reward are means over the same number of
steps at each end (it compared step 1 alone with the mean of the last three)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif_api import RLAIFJob, resolve_stage_configs
from rlaif_trainer.rl.loop import headline_window


@pytest.mark.parametrize(("steps", "window"), [(0, 0), (1, 1), (3, 1), (8, 2), (12, 3), (100, 10)])
def test_headline_window(steps: int, window: int):
    assert headline_window(steps) == window


def test_summary_compares_as_many_steps_at_each_end(tmp_path: Path, tiny_model_dir: Path):
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(4)))
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "h"},
            "spec": {
                "policy": {"model": str(tiny_model_dir), "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
                "dataset": {"prompts": str(prompts)},
                "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
                "rl": {
                    "algorithm": "rloo",
                    "reward": "direct",
                    "steps": 1,
                    "batchSize": 1,
                    "samplesPerPrompt": 2,
                },
                "stages": ["rl"],
            },
        }
    )
    cfg = resolve_stage_configs(job, tmp_path / "ws")["rl"]
    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    trainer = RLTrainer(
        loop_config(cfg),
        model=model,
        tokenizer=tok,
        reward_fn=lambda p, r: [0.0] * len(r),
        progress=False,
        device="cpu",
    )
    trainer.work_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "step": i + 1,
            "reward": float(i),
            "response_length": 10.0 + i,
            "kl": 0.0,
            "entropy": 1.0,
            "gen_time_s": 1.0,
            "train_time_s": 1.0,
            "reward_time_s": 1.0,
            "tokens": 10,
        }
        for i in range(12)
    ]
    trainer.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = trainer.summary(1.0)
    # 12 steps: 3 at each end. Step 1 alone would give 0.0; the last three average 10.0.
    assert s["headline_steps"] == 3
    assert s["initial_reward"] == pytest.approx(1.0) and s["final_reward"] == pytest.approx(10.0)
    assert s["initial_response_length"] == pytest.approx(11.0)
