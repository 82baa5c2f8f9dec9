"""RL across two "nodes" on CPU: two launcher agents on loopback (gloo), launched with the stage pod's
own command line (``rlaif_api.contract.launch_command``) running the real ``rl`` stage from its
config, against one process with the same global batch and seed; and a kill and restart of both.

Tolerance: the two runs draw the same samples and compute the same losses and averaged gradients,
but not in the same floating-point order: each node pads its half of the batch to its own longest
prompt and response (other matrix shapes, so other float32 blocking in the kernels), and the
gradient all-reduce adds two partial means where one process sums once. Measured over 3 steps of
reinforce, rloo and ppo, every metric agreed within 1.1e-5 relative, except the loss where it is
a cancellation (RLOO's and the baselined advantages sum to about zero, times sequence log-probs of
about -50), which agreed within 3e-6 absolute. ``REL``/``ABS`` (1e-3, 1e-4) leave a margin of 30 to
90 times over that, through a few AdamW steps, and stay far below what a real difference gives:
per-process sampling seeds (the loop before this test) move step 1's reward by 5e-3 relative and
its loss by 80%, and unaveraged gradients move step 2's KL by more than 10%. The bias of the value
head sits out the first update for the same reason (see ``RLTrainer.train_step``): AdamW turned its
rounding-level first gradient into a ±lr step of random sign, which moved reinforce's step-2 loss by 40%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

from rlaif_api import RLAIFJob, resolve_stage_configs
from tests.unit.trainer.multinode import has_launcher, run_nodes, run_single, stage_args, stage_env
from tests.unit.trainer.rl.crashing_rules import KILL_WHEN_EXISTS

REL, ABS = 1e-3, 1e-4
#: The per-step metrics compared (reward, KL and loss, and what they are made of).
KEYS = ("reward", "kl", "loss", "return", "reward_std", "entropy", "response_length", "grad_norm")
CRASHING = "tests.unit.trainer.rl.crashing_rules:prefer_shorter"

needs_accelerate = pytest.mark.skipif(not has_launcher(), reason="the accelerate CLI is not installed")


def _stage(tmp_path: Path, name: str, model_dir: Path, rl: dict) -> tuple[list[str], Path, Path]:
    """The rl stage's config in its own workspace; returns (stage args, policy dir, termination log)."""
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text(
            "".join(
                json.dumps({"prompt": f"Question {i}: what is {i} times {i + 3}?"}) + "\n" for i in range(12)
            )
        )
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "mn"},
            "spec": {
                "policy": {"model": str(model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "dataset": {"prompts": str(prompts)},
                "labeler": {"provider": "python", "callable": CRASHING},
                "rl": {
                    "reward": "direct",
                    "batchSize": 4,
                    "samplesPerPrompt": 2,
                    "maxNewTokens": 8,
                    "learningRate": 5e-2,
                    **rl,
                },
                "stages": ["rl"],
                "seed": 11,
            },
        }
    )
    cfg = resolve_stage_configs(job, tmp_path / name / "ws")["rl"]
    path = tmp_path / name / "rl.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json())
    term = tmp_path / name / "termination.json"
    return stage_args("rl", path, term), Path(cfg.artifacts.policy), term


def _rows(policy: Path) -> list[dict]:
    return [json.loads(x) for x in (policy / "metrics.jsonl").read_text().splitlines()]


def _assert_same_steps(two: list[dict], one: list[dict]) -> None:
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(two, one, strict=True):
        # The same samples: as many tokens and characters, the same first response.
        assert (a["tokens"], a["samples"], a["example"]) == (b["tokens"], b["samples"], b["example"]), a[
            "step"
        ]
        assert a["response_chars"] == pytest.approx(b["response_chars"], rel=1e-12)
        for key in KEYS:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=REL, abs=ABS), (a["step"], key, a[key], b[key])


@pytest.mark.slow  # two launches (one of two agents): ~30-50 s on 2 shared cores
@needs_accelerate
def test_rl_steps_on_two_nodes_match_one_process(tmp_path: Path, tiny_model_dir: Path):
    # reinforce (the paper's): per-sample means, and the value head started at the all-reduced mean
    # return. PPO's token-weighted losses are compared in the resume test below.
    rl = {"algorithm": "reinforce", "steps": 3, "checkpointEvery": 2}
    one_args, one_policy, one_term = _stage(tmp_path, "one", tiny_model_dir, rl)
    two_args, two_policy, two_term = _stage(tmp_path, "two", tiny_model_dir, rl)
    env = stage_env()

    single = run_single(one_args, env)
    assert single.returncode == 0, single.output[-4000:]
    nodes = run_nodes(two_args, env, tmp_path / "logs")
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].output[-3000:] + nodes[1].output[-3000:]

    s1, s2 = json.loads(one_term.read_text()), json.loads(two_term.read_text())
    assert (s1["processes"], s2["processes"]) == (1, 2)
    assert s2["replicas_in_sync"] is True
    _assert_same_steps(_rows(two_policy), _rows(one_policy))
    assert s2["final_reward"] == pytest.approx(s1["final_reward"], rel=REL, abs=ABS)
    assert s2["final_kl"] == pytest.approx(s1["final_kl"], rel=REL, abs=ABS)


@pytest.mark.slow  # three launches: ~45-70 s on 2 shared cores
@needs_accelerate
def test_rl_two_nodes_resume_from_one_writers_checkpoint_after_a_kill(tmp_path: Path, tiny_model_dir: Path):
    # ppo: token-weighted losses and advantage whitening over both nodes' tokens, and a value head.
    rl = {"algorithm": "ppo", "steps": 4, "checkpointEvery": 2}
    one_args, one_policy, _ = _stage(tmp_path, "one", tiny_model_dir, rl)
    two_args, two_policy, two_term = _stage(tmp_path, "two", tiny_model_dir, rl)
    checkpoints = Path(f"{two_policy}.partial") / "checkpoints"
    step2 = checkpoints / "step-00000002"

    single = run_single(one_args, stage_env())
    assert single.returncode == 0, single.output[-4000:]

    # Both ranks kill themselves in step 3, right after the checkpoint of step 2 (a lost JobSet).
    killed = run_nodes(
        two_args, stage_env(**{KILL_WHEN_EXISTS: str(step2 / "state.pt")}), tmp_path / "killed"
    )
    killed_log = killed[0].output + killed[1].output
    assert all(n.returncode != 0 for n in killed), killed_log[-4000:]
    assert not (two_policy / "DONE").exists()
    # One writer: rank 0 logged the save once, and the checkpoint is one file, not one per rank.
    assert killed_log.count("checkpoint saved at step 2") == 1, killed_log[-4000:]
    assert "checkpoint saved at step 2" in killed[0].output
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"]
    assert [p.name for p in step2.iterdir()] == ["state.pt"]

    resumed = run_nodes(two_args, stage_env(), tmp_path / "resumed")
    assert [n.returncode for n in resumed] == [0, 0], resumed[0].output[-3000:] + resumed[1].output[-3000:]
    # Both ranks resumed from rank 0's checkpoint of step 2, not one from scratch.
    for node in resumed:
        assert f"rl: resumed from {step2} (step 2)" in node.output, (node.rank, node.output[-3000:])
    summary = json.loads(two_term.read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4 and summary["replicas_in_sync"] is True
    # Steps 1-2 from before the kill, 3-4 after it: all as one uninterrupted process computes them.
    _assert_same_steps(_rows(two_policy), _rows(one_policy))
