"""A stage that gets SIGTERM (its pod deleted, suspended or preempted) stops at once, as a
retryable failure that says why, instead of running on until the kubelet's SIGKILL: the trainer is
its container's PID 1, which ignores SIGTERM unless it handles it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif_api import RLAIFJob, resolve_stage_configs
from rlaif_api.contract import EXIT_RETRYABLE


@pytest.mark.slow  # a subprocess that loads torch and trains until signalled: ~15-30 s
def test_sigterm_stops_a_running_stage_with_a_retryable_failure(tmp_path: Path, tiny_model_dir: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(8))
    )
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "term"},
            "spec": {
                "policy": {"model": str(tiny_model_dir)},
                "dataset": {"prompts": str(prompts)},
                "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
                "rl": {
                    "reward": "direct",
                    "steps": 10000,
                    "batchSize": 2,
                    "samplesPerPrompt": 2,
                    "maxNewTokens": 4,
                },
                "stages": ["rl"],
            },
        }
    )
    config = resolve_stage_configs(job, tmp_path / "ws")["rl"]
    config_path, term = tmp_path / "rl.json", tmp_path / "termination.json"
    config_path.write_text(config.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLAIF_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif_trainer.cli", "rl", "--config", str(config_path), "--no-progress",
         "--termination-log", str(term)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workspace = Path(config.workspace)  # the steps are logged under the policy's work directory

    def logged_a_step() -> bool:
        return any(m.read_text().strip() for m in workspace.glob("**/metrics.jsonl"))

    deadline = time.monotonic() + 240
    while not logged_a_step():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the rl stage logged no step"
        time.sleep(0.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - signalled
    assert proc.returncode == EXIT_RETRYABLE, out[-3000:]
    assert stopped_in < 20, f"took {stopped_in:.1f}s to stop"
    summary = json.loads(term.read_text())
    assert "SIGTERM" in summary["error"] and "resumes from the last checkpoint" in summary["error"]
