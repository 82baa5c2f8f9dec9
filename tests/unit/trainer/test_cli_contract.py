"""The stage contract of ``rlaif-train`` (rlaif_api.contract): summary JSON in the termination log, at most
4 KiB, exit 0 on success, 65 on bad input, 1 on anything retryable.

The stage bodies are replaced by small functions registered as a module here: what is under test is
the CLI's handling of their outcomes, which the real stages are tested for elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest

import rlaif_api as api
from rlaif_api.contract import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, compact_summary
from rlaif_api.summaries import LabelSummary, RewardSummary
from rlaif_trainer import cli
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.stages import REGISTRY
from tests.api_cases import base_job


@pytest.fixture
def label_config(tmp_path: Path) -> Path:
    job = api.RLAIFJob.model_validate(base_job("cli"))
    config = api.resolve_stage_configs(job, tmp_path / "ws")["label"]
    path = tmp_path / "label.json"
    path.write_text(config.to_json())
    return path


@pytest.fixture
def fake_stage(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("fake_stage")
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    monkeypatch.setitem(REGISTRY, "label", dataclasses.replace(REGISTRY["label"], module="fake_stage"))
    return module


def _run(config: Path, log: Path) -> int:
    return cli.main(["label", "--config", str(config), "--termination-log", str(log), "--no-progress"])


def test_success_writes_the_summary(fake_stage, label_config: Path, tmp_path: Path):
    seen = {}

    def run(config, *, progress):
        seen["config"], seen["progress"] = config, progress
        return LabelSummary(pairs=16, consistency_rate=0.75, mean_confidence=None)

    fake_stage.run = run
    log = tmp_path / "termination-log"
    assert _run(label_config, log) == EXIT_OK
    # the summary's fields as the stage set them (an explicit None is reported as null), after the stage
    assert json.loads(log.read_text()) == {
        "stage": "label",
        "pairs": 16,
        "consistency_rate": 0.75,
        "mean_confidence": None,
    }
    assert seen["config"].stage == "label" and seen["progress"] is False


def test_a_stage_must_return_its_own_summary_model(fake_stage, label_config: Path, tmp_path: Path):
    # A plain dict, or another stage's model, is a trainer bug: retryable, and it says which stage.
    for wrong in ({"pairs": 16}, RewardSummary(accuracy=0.5)):
        fake_stage.run = lambda config, *, progress, wrong=wrong: wrong
        log = tmp_path / "termination-log"
        assert _run(label_config, log) == EXIT_RETRYABLE
        message = json.loads(log.read_text())
        assert message["permanent"] is False and "not its LabelSummary" in message["error"]


def test_bad_input_is_permanent(fake_stage, label_config: Path, tmp_path: Path):
    def run(config, *, progress):
        raise BadInputError("prompts.jsonl line 3: not JSON")

    fake_stage.run = run
    log = tmp_path / "termination-log"
    assert _run(label_config, log) == EXIT_BAD_INPUT == 65
    assert json.loads(log.read_text()) == {
        "stage": "label",
        "error": "prompts.jsonl line 3: not JSON",
        "permanent": True,
    }


def test_other_failures_are_retryable(fake_stage, label_config: Path, tmp_path: Path):
    def run(config, *, progress):
        raise RuntimeError("CUDA error: an illegal memory access")

    fake_stage.run = run
    log = tmp_path / "termination-log"
    assert _run(label_config, log) == EXIT_RETRYABLE
    summary = json.loads(log.read_text())
    assert summary["permanent"] is False and "illegal memory access" in summary["error"]


def test_missing_or_mismatched_config_is_bad_input(fake_stage, label_config: Path, tmp_path: Path):
    log = tmp_path / "termination-log"
    assert _run(tmp_path / "nope.json", log) == EXIT_BAD_INPUT
    assert "does not exist" in json.loads(log.read_text())["error"]
    assert (
        cli.main(["reward", "--config", str(label_config), "--termination-log", str(log)]) == EXIT_BAD_INPUT
    )
    assert "for stage 'label'" in json.loads(log.read_text())["error"]


def test_summary_is_cut_to_four_kib():
    summary = {"stage": "rl", "final_reward": 0.5, "history": ["x" * 100] * 100}
    text = compact_summary(summary)
    assert len(text.encode()) <= 4096
    assert json.loads(text) == {"stage": "rl", "final_reward": 0.5}


def test_only_rank_zero_writes(
    fake_stage, label_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fake_stage.run = lambda config, *, progress: LabelSummary(pairs=1)
    monkeypatch.setenv("RANK", "1")
    log = tmp_path / "termination-log"
    assert _run(label_config, log) == EXIT_OK
    assert not log.exists()


@pytest.mark.parametrize(
    "command", ["label", "reward", "rl", "evaluate", "pipeline", "validate", "fetch-model"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "usage: rlaif-train" in capsys.readouterr().out
