"""Reward-model training across two "nodes" on CPU: two launcher agents on loopback (gloo), launched
with the stage pod's own command line (``rlaif_api.contract.launch_command``) running the real
``reward`` stage from its config, killed (every process of both nodes) after a checkpoint and
started again, against one uninterrupted process with the same global batch and seed. The steps
before the kill were computed by the first launch, the later ones and the evaluation by the second.

Tolerance: each node takes every second pair of each global batch, pads it to its own longest pair
and sums its share of the loss; DDP then averages the two gradients. That is the one-process
gradient of the same batch in exact arithmetic, and differs from it by float32 rounding in another
summation order (and other matrix shapes). Measured: per-step losses within 1.1e-7 relative over
15 AdamW steps, the eval loss equal to its 5 rounded digits. ``REL``/``ABS`` (1e-4, 1e-5) leave
three orders of magnitude over that, and are far below what a real difference gives: a pair counted twice or lost,
or a gradient not averaged (each node its own), moves a step's loss by 1e-2 or more. The accuracy is
a count of agreeing pairs, so it must be equal. LoRA dropout is 0: dropout draws its masks from each
process's own RNG, which no split of the batch can reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

from rlaif_api import RLAIFJob, resolve_stage_configs
from tests.unit.trainer.multinode import has_launcher, run_nodes, run_single, stage_args, stage_env

REL, ABS = 1e-4, 1e-5
needs_accelerate = pytest.mark.skipif(not has_launcher(), reason="the accelerate CLI is not installed")


def _labels(path: Path, n: int = 60) -> None:
    """Pairs of varied lengths and soft labels (a learnable rule: the "good" response wins)."""
    rows = []
    for i in range(n):
        good, bad = "good answer " * (1 + i % 3), "bad " * (1 + (i * 7) % 5)
        a_good = i % 2 == 0
        rows.append(
            {
                "id": f"p{i}",
                "prompt": f"question {i} about {'x' * (i % 6)}",
                "response_a": good if a_good else bad,
                "response_b": bad if a_good else good,
                "p_a": [0.9, 0.75, 0.6][i % 3] if a_good else [0.1, 0.3, 0.45][i % 3],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _stage(tmp_path: Path, name: str, model_dir: Path) -> tuple[list[str], Path, Path]:
    """The reward stage's config in its own workspace: (stage args, reward-model dir, termination log)."""
    labels = tmp_path / "labels.jsonl"
    if not labels.exists():
        _labels(labels)
        (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "mn"},
            "spec": {
                "policy": {"model": str(model_dir)},
                "dataset": {"prompts": str(tmp_path / "prompts.jsonl"), "labels": str(labels)},
                "rewardModel": {
                    # 60 pairs: 30 held out, 30 trained on in 5 global batches of 6 per epoch.
                    "epochs": 3,
                    "batchSize": 6,
                    "learningRate": 3e-3,
                    "maxLength": 64,
                    "evalFraction": 0.2,
                    "checkpointEvery": 2,
                    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                    "minHeldOutAccuracy": 0,  # the tiny random model is not what this test judges
                },
                "stages": ["reward"],
                "seed": 3,
            },
        }
    )
    cfg = resolve_stage_configs(job, tmp_path / name / "ws")["reward"]
    path = tmp_path / name / "reward.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json())
    term = tmp_path / name / "termination.json"
    return stage_args("reward", path, term), Path(cfg.artifacts.reward_model), term


def _losses(model_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def _assert_same_training(two: Path, one: Path, s2: dict, s1: dict) -> None:
    l2, l1 = _losses(two), _losses(one)
    assert [s for s, _ in l2] == [s for s, _ in l1] == list(range(1, 16))
    for (step, a), (_, b) in zip(l2, l1, strict=True):
        assert a == pytest.approx(b, rel=REL, abs=ABS), (step, a, b)
    assert (s2["processes"], s1["processes"]) == (2, 1)
    assert (s2["train_pairs"], s2["eval_pairs"]) == (s1["train_pairs"], s1["eval_pairs"]) == (30, 30)
    assert s2["accuracy"] == s1["accuracy"]
    for key in ("eval_loss", "loss"):
        assert s2[key] == pytest.approx(s1[key], rel=REL, abs=ABS), key


@pytest.mark.slow  # three launches, two of them of two agents: ~45-90 s on 2 shared cores
@needs_accelerate
def test_reward_training_on_two_nodes_matches_one_process_and_resumes_after_a_kill(
    tmp_path: Path, tiny_model_dir: Path
):
    one_args, one_model, one_term = _stage(tmp_path, "one", tiny_model_dir)
    kill_args, kill_model, kill_term = _stage(tmp_path, "two", tiny_model_dir)
    env = stage_env()

    single = run_single(one_args, env)
    assert single.returncode == 0, single.output[-4000:]
    s1 = json.loads(one_term.read_text())

    # Kill every process of both nodes once a checkpoint exists (a lost JobSet), then start both again.
    ckpt = Path(f"{kill_model}.partial") / "checkpoint"
    killed = run_nodes(kill_args, env, tmp_path / "killed", kill_when=(ckpt / "trainer_state.json").exists)
    assert all(n.returncode != 0 for n in killed) and not (kill_model / "DONE").exists()
    at = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 2 <= at < 15
    # One writer: one state file and its marker (accelerate's save_state wrote an RNG file per rank),
    # and each save logged once, by rank 0.
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.pt", "trainer_state.json"]
    saves = [line for line in killed[0].output.splitlines() if "reward: checkpoint saved at step" in line]
    assert saves and "reward: checkpoint saved at step" not in killed[1].output
    assert len(saves) == len({line.split("step ")[-1] for line in saves})

    resumed = run_nodes(kill_args, env, tmp_path / "resumed")
    assert [n.returncode for n in resumed] == [0, 0], resumed[0].output[-3000:] + resumed[1].output[-3000:]
    for node in resumed:  # both ranks from rank 0's checkpoint, not one of them from scratch
        assert f"reward: resumed from step {at}" in node.output, (node.rank, node.output[-3000:])
    s_kill = json.loads(kill_term.read_text())
    assert s_kill["resumed_from_step"] == at
    # Steps before the kill, and after the restart, as one uninterrupted process computes them.
    _assert_same_training(kill_model, one_model, s_kill, s1)
