"""The one train / held-out split that the label, rl and evaluate stages share."""

from __future__ import annotations

from pathlib import Path

from rlaif_trainer.data.prompts import split_prompt_records, split_prompts, train_prompt_records

from ..conftest import make_stage_config, write_jsonl


def _spec(tmp_path: Path, n: int, **dataset) -> object:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"prompt {i}"} for i in range(n)])
    spec = {
        "policy": {"model": "m"},
        "dataset": {"prompts": "prompts.jsonl", **dataset},
        "stages": ["rl"],
        "rl": {"reward": "direct"},
    }
    spec["labeler"] = {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"}
    return make_stage_config(tmp_path, "rl", spec).spec


def test_the_last_tenth_is_held_out_and_never_trained_on(tmp_path: Path):
    spec = _spec(tmp_path, 25)
    train, held_out = split_prompts(spec)
    assert train == [f"prompt {i}" for i in range(23)] and held_out == ["prompt 23", "prompt 24"]
    # the label stage samples candidates for exactly the prompts RL trains on
    assert [r["prompt"] for r in train_prompt_records(spec)] == train
    assert all(
        r["source"].endswith(f"prompts.jsonl:{i + 1}") for i, r in enumerate(split_prompt_records(spec)[0])
    )


def test_eval_prompts_and_max_prompts(tmp_path: Path):
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "held out"}])
    spec = _spec(tmp_path, 5, evalPrompts="eval.jsonl", maxPrompts=3)
    # maxPrompts caps the prompts that get labelled pairs; RL trains on every training prompt
    assert split_prompts(spec) == ([f"prompt {i}" for i in range(5)], ["held out"])
    assert [r["prompt"] for r in train_prompt_records(spec)] == ["prompt 0", "prompt 1", "prompt 2"]


def test_a_single_prompt_is_both_trained_and_evaluated_on(tmp_path: Path):
    assert split_prompts(_spec(tmp_path, 1)) == (["prompt 0"], ["prompt 0"])
