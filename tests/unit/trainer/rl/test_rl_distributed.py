"""RL data-parallel under ``accelerate launch``: 2 CPU processes (gloo) train, log and checkpoint once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

from rlaif_api import RLAIFJob, resolve_stage_configs


def _accelerate() -> str | None:
    exe = Path(sys.executable).with_name("accelerate")
    return str(exe) if exe.exists() else shutil.which("accelerate")


@pytest.mark.slow  # one two-process launch: ~30-50 s on 2 shared cores
@pytest.mark.skipif(_accelerate() is None, reason="accelerate CLI not installed")
def test_two_gloo_processes_train_and_checkpoint_once(tmp_path: Path, tiny_model_dir: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"Question {i}: what is the capital of France?"}) + "\n" for i in range(10)
        )
    )
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "dist"},
            "spec": {
                "policy": {"model": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "dataset": {"prompts": str(prompts)},
                "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
                "rl": {
                    "algorithm": "rloo",
                    "reward": "direct",
                    "steps": 3,
                    "batchSize": 4,
                    "samplesPerPrompt": 2,
                    "maxNewTokens": 8,
                    "checkpointEvery": 2,
                    "learningRate": 1e-2,
                },
                "stages": ["rl"],
            },
        }
    )
    cfg = resolve_stage_configs(job, tmp_path / "ws")["rl"]
    cfg_path = tmp_path / "rl.json"
    cfg_path.write_text(cfg.to_json())
    term = tmp_path / "termination.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "RLAIF_DEVICE": "cpu",
    }
    # `--multi_gpu` launches through torchrun; without CUDA every process joins a gloo group
    # (accelerate's own --cpu launcher would need mpirun for several processes).
    proc = subprocess.run(
        [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
         "-m", "rlaif_trainer.cli", "--log-level", "INFO", "rl", "--config", str(cfg_path),
         "--no-progress", "--termination-log", str(term)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = json.loads(term.read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert summary["replicas_in_sync"] is True  # gradients were averaged: identical weights on both ranks
    out = Path(cfg.artifacts.policy)
    assert (out / "DONE").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one line per step, not one per process
    assert all(r["samples"] == 8 for r in rows)  # 4 prompts x 2 samples across both processes
    # Checkpoints at steps 2 and 3, each written once (by rank 0), not once per process.
    assert log.count("checkpoint saved at step 2") == 1, log[-4000:]
    assert log.count("checkpoint saved at step 3") == 1
    assert log.count('"stage":"rl"') == 1  # only rank 0 prints the summary
