"""The reward model: the paper's soft-label loss, Bradley-Terry, batching, training, resume, data parallel."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlaif_api.summaries import RewardSummary
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.loading import load_reward_model
from rlaif_trainer.reward_model.batching import length_grouped_batches, split_pairs
from rlaif_trainer.reward_model.losses import bradley_terry_loss, soft_label_loss
from rlaif_trainer.reward_model.scorer import load_reward_scorer
from rlaif_trainer.reward_model.training import train_reward_model
from rlaif_trainer.stages import reward

from ..conftest import make_stage_config, write_jsonl


def test_soft_label_loss_equals_the_hand_computation():
    r_a = torch.tensor([1.0, -0.5, 2.0, 0.0])
    r_b = torch.tensor([0.0, 0.5, -1.0, 0.0])
    p = torch.tensor([0.8, 0.3, 1.0, 0.5])
    got = soft_label_loss(r_a, r_b, p)
    for i in range(4):
        ea, eb = math.exp(r_a[i]), math.exp(r_b[i])
        qa, qb = ea / (ea + eb), eb / (ea + eb)  # softmax of the two rewards
        want = -(p[i] * math.log(qa) + (1 - p[i]) * math.log(qb))
        assert float(got[i]) == pytest.approx(float(want), rel=1e-6)
    # hard numbers for the first pair: -(0.8 log σ(1) + 0.2 log σ(-1))
    assert float(got[0]) == pytest.approx(0.8 * 0.3132617 + 0.2 * 1.3132617, abs=1e-6)
    # a soft label of 1 reduces to Bradley-Terry with a as the winner
    assert float(got[2]) == pytest.approx(float(bradley_terry_loss(r_a[2:3], r_b[2:3], p[2:3])[0]), rel=1e-6)


def test_bradley_terry_uses_hard_labels():
    r_a, r_b = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    got = bradley_terry_loss(r_a, r_b, torch.tensor([0.6, 0.4]))
    assert float(got[0]) == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-6)
    assert float(got[1]) == pytest.approx(-math.log(1 / (1 + math.exp(1))), rel=1e-6)


def test_length_grouped_batches_cover_everything_and_group_lengths():
    lengths = [(i * 37) % 101 for i in range(200)]
    b1 = length_grouped_batches(lengths, 8, seed=0, epoch=0, window=5)
    assert sorted(i for b in b1 for i in b) == list(range(200))
    assert b1 == length_grouped_batches(lengths, 8, seed=0, epoch=0, window=5)
    assert b1 != length_grouped_batches(lengths, 8, seed=0, epoch=1, window=5)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in b1) / len(b1)
    rnd = [list(range(s, s + 8)) for s in range(0, 200, 8)]
    spread_rnd = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in rnd) / len(rnd)
    assert spread < spread_rnd / 3
    assert all(len(b) >= 3 for b in length_grouped_batches(lengths[:10], 4, seed=0, epoch=0, min_batch=3))
    for epoch in range(3):  # the longest batch first, so that running out of memory shows at once
        assert max(lengths) in [
            lengths[i] for i in length_grouped_batches(lengths, 8, seed=0, epoch=epoch)[0]
        ]


def test_split_is_seeded_and_holds_out_at_least_one():
    pairs = [{"id": str(i)} for i in range(10)]
    tr, ev = split_pairs(pairs, 0.1, seed=0)
    # 10% of 10 is one pair; the quality gate's minimum (50, or half of fewer than 100) makes it five
    assert len(ev) == 5 and len(tr) == 5 and split_pairs(pairs, 0.1, seed=0) == (tr, ev)
    assert len(split_pairs(pairs[:2], 0.1, seed=0)[1]) == 1
    assert split_pairs(pairs, 0.0, seed=0)[1] == []


def _pairs(n: int) -> list[dict]:
    # a learnable rule: "good" responses win
    return [
        {
            "id": f"x{i}",
            "prompt": f"question {i}",
            "response_a": "good answer" if i % 2 else "bad",
            "response_b": "bad" if i % 2 else "good answer",
            "p_a": 0.9 if i % 2 else 0.1,
        }
        for i in range(n)
    ]


def test_training_lowers_the_loss_and_learns_the_rule(tiny_model_dir: Path):
    torch.manual_seed(0)
    model, tok = load_reward_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    losses: list[float] = []
    m = train_reward_model(
        model,
        tok,
        _pairs(32),
        _pairs(8),
        epochs=3,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        progress=False,
        on_step=lambda s, v: losses.append(v),
    )
    assert m["steps"] == 12 and len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert m["accuracy"] == 1.0 and m["samples_per_s"] > 0 and m["eval_pairs"] == 8
    # gradients are freed after each update, not held through the next forward (peak memory)
    assert all(p.grad is None for p in m["model"].parameters())


def test_checkpoint_resume_matches_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path):
    def fresh():
        torch.manual_seed(0)
        return load_reward_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)

    kw = dict(epochs=2, learning_rate=1e-3, batch_size=4, max_length=64, progress=False, seed=5)
    model, tok = fresh()
    full = train_reward_model(model, tok, _pairs(12), **kw)["model"]

    class Crash(Exception):
        pass

    def crash_at(step, loss):
        if step == 4:
            raise Crash

    model, tok = fresh()
    with pytest.raises(Crash):
        train_reward_model(
            model, tok, _pairs(12), checkpoint_dir=tmp_path, checkpoint_every=3, on_step=crash_at, **kw
        )
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 3
    model, tok = fresh()
    m = train_reward_model(model, tok, _pairs(12), checkpoint_dir=tmp_path, checkpoint_every=3, **kw)
    assert m["resumed_from_step"] == 3 and m["steps"] == 6
    for (n1, p1), (_, p2) in zip(full.named_parameters(), m["model"].named_parameters(), strict=True):
        assert torch.allclose(p1, p2, atol=1e-6), n1


def test_lora_reward_model_trains_adapters_and_head(tiny_model_dir: Path):
    from rlaif_api import LoraSpec

    torch.manual_seed(0)
    model, tok = load_reward_model(
        str(tiny_model_dir),
        device="cpu",
        dtype=torch.float32,
        lora=LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and any("score" in n for n in names)
    assert not any("embed_tokens" in n for n in names)
    m = train_reward_model(model, tok, _pairs(8), epochs=1, batch_size=4, max_length=64, progress=False)
    assert m["steps"] == 2


def _reward_spec(tmp_path: Path, model_dir: Path, n: int = 20) -> dict:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}])
    write_jsonl(tmp_path / "labels.jsonl", _pairs(n))
    return {
        "policy": {"model": str(model_dir)},
        "dataset": {"prompts": "prompts.jsonl", "labels": "labels.jsonl"},
        "rewardModel": {
            "epochs": 2,
            "learningRate": 3e-3,
            "batchSize": 4,
            "maxLength": 64,
            "evalFraction": 0.2,
            "checkpointEvery": 2,
        },
        "stages": ["reward"],
    }


def test_reward_stage_end_to_end_and_scorer(tmp_path: Path, tiny_model_dir: Path):
    cfg = make_stage_config(tmp_path, "reward", _reward_spec(tmp_path, tiny_model_dir))
    summary = reward.run(cfg, progress=False)
    assert isinstance(summary, RewardSummary)
    assert None not in (summary.accuracy, summary.loss, summary.samples_per_s)
    # 20 pairs: half are held out (the gate wants 50 when there are 100), 10 train pairs = 3 batches of 4
    assert summary.eval_pairs == 10 and summary.train_pairs == 10 and summary.steps == 6
    assert summary.gate_passed is True
    out = Path(cfg.artifacts.reward_model)
    assert (out / "DONE").is_file() and (out / "config.json").is_file() and not (out / "checkpoint").exists()
    scorer = load_reward_scorer(out, device="cpu")
    good, bad = scorer(["question 1", "question 1"], ["good answer", "bad"])
    assert good > bad
    again = reward.run(cfg, progress=False)
    assert again.resumed is True and again.accuracy == summary.accuracy


def test_reward_stage_without_labels_is_bad_input(tmp_path: Path, tiny_model_dir: Path):
    spec = _reward_spec(tmp_path, tiny_model_dir)
    (tmp_path / "labels.jsonl").write_text(
        '{"id": "a", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 1.5}\n'
    )
    with pytest.raises(BadInputError, match=r"labels.jsonl:1.*p_a"):
        reward.run(make_stage_config(tmp_path, "reward", spec), progress=False)


def _accelerate() -> str | None:
    exe = Path(sys.executable).with_name("accelerate")
    return str(exe) if exe.exists() else shutil.which("accelerate")


@pytest.mark.slow  # two process launches: ~40 s on 2 cores
@pytest.mark.skipif(_accelerate() is None, reason="accelerate CLI not installed")
def test_two_gloo_processes_match_one_process(tmp_path: Path, tiny_model_dir: Path):
    # `accelerate launch --multi_gpu` uses torchrun; without CUDA, Accelerator(cpu=True) joins a gloo
    # process group (accelerate's --cpu launcher would need mpirun for several processes).
    worker = Path(__file__).with_name("reward_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one = tmp_path / "one.json"
    two = tmp_path / "two.json"
    subprocess.run(
        [sys.executable, str(worker), str(tiny_model_dir), str(one)], check=True, env=env, timeout=300
    )
    subprocess.run(
        [
            _accelerate(),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29517",
            str(worker),
            str(tiny_model_dir),
            str(two),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    assert len(a["losses"]) == len(b["losses"]) == 4
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-4, abs=1e-5)
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
