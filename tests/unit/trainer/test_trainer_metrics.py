"""The trainer's Prometheus endpoint: names, values, no labels, the CLI flag, and real stages feeding it."""

from __future__ import annotations

import dataclasses
import re
import socket
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

import rlaif_api as api
from rlaif_api.contract import EXIT_OK
from rlaif_api.summaries import LabelSummary
from rlaif_trainer import cli, metrics
from rlaif_trainer.stages import REGISTRY
from tests.api_cases import base_job

from .conftest import make_stage_config, write_jsonl

DASHBOARD_FAMILIES = (
    "rlaif_trainer_samples_per_second",
    "rlaif_trainer_tokens_per_second",
    "rlaif_trainer_reward",
    "rlaif_trainer_kl",
)


def scrape(port: int) -> dict[str, float]:
    """``{sample name: value}`` of the trainer's series on ``127.0.0.1:port/metrics``; fails on labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels == {}, f"{sample.name} has labels {sample.labels}"
            out[sample.name] = sample.value
    return out


def values(recorder: metrics.TrainerMetrics) -> dict[str, float]:
    return {
        s.name: s.value
        for family in recorder.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def recorder() -> Iterator[metrics.TrainerMetrics]:
    """A fresh recorder made the process's one for the test, not served."""
    rec = metrics.TrainerMetrics()
    previous = metrics.activate(rec)
    try:
        yield rec
    finally:
        metrics.activate(previous)


# -- the endpoint ---------------------------------------------------------------------------------


def test_server_exposes_recorded_steps_without_labels() -> None:
    rec = metrics.TrainerMetrics()
    port = rec.serve(0, "127.0.0.1")
    try:
        before = scrape(port)
        assert before == {"rlaif_trainer_steps_total": 0.0, "rlaif_trainer_samples_total": 0.0}, (
            "only the counters exist before the first step: an unset gauge would read as a reward of 0"
        )
        rec.record_step(samples=8, seconds=2.0, tokens=100, loss=0.5, reward=0.25, kl=0.01, progress=0.5)
        rec.record_step(samples=4, seconds=0.5, tokens=30, loss=0.25, reward=-0.75, kl=0.02, progress=1.5)
        got = scrape(port)
    finally:
        rec.close()
    assert got == {
        "rlaif_trainer_steps_total": 2.0,
        "rlaif_trainer_samples_total": 12.0,
        "rlaif_trainer_samples_per_second": 8.0,  # the latest step: 4 samples in 0.5 s
        "rlaif_trainer_tokens_per_second": 60.0,
        "rlaif_trainer_loss": 0.25,
        "rlaif_trainer_reward": -0.75,
        "rlaif_trainer_kl": 0.02,
        "rlaif_trainer_progress_ratio": 1.0,  # clamped
        "rlaif_trainer_estimated_remaining_seconds": 0.0,  # all done
    }
    assert set(DASHBOARD_FAMILIES) <= set(got)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_own_registry_and_nothing_recorded_without_a_recorder() -> None:
    from prometheus_client import REGISTRY

    assert metrics.active() is None
    metrics.record_step(samples=3, seconds=1.0, reward=1.0)  # no recorder: nothing to fail
    metrics.record_progress(0.5)
    rec = metrics.TrainerMetrics()
    assert REGISTRY.get_sample_value("rlaif_trainer_steps_total") is None
    assert values(rec)["rlaif_trainer_steps_total"] == 0.0
    assert metrics.activate(rec) is None
    try:
        metrics.record_step(samples=3, seconds=0.0, reward=1.0)
    finally:
        metrics.activate(None)
    got = values(rec)
    assert got["rlaif_trainer_steps_total"] == 1.0 and got["rlaif_trainer_reward"] == 1.0
    assert "rlaif_trainer_samples_per_second" not in got  # a zero-length step gives no rate


# -- the CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(REGISTRY))
def test_stage_help_lists_metrics_port(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([stage, "--help"])
    assert "--metrics-port" in capsys.readouterr().out


def test_metrics_port_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLAIF_METRICS_PORT", raising=False)
    assert cli.build_parser().parse_args(["rl", "--config", "c.json"]).metrics_port == 0
    monkeypatch.setenv("RLAIF_METRICS_PORT", "9400")
    assert cli.build_parser().parse_args(["rl", "--config", "c.json"]).metrics_port == 9400
    assert (
        cli.build_parser().parse_args(["rl", "--config", "c.json", "--metrics-port", "81"]).metrics_port == 81
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["rl", "--config", "c.json", "--metrics-port", "65536"])


def test_stage_command_serves_metrics_while_the_stage_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = api.RLAIFJob.model_validate(base_job("cli"))
    config = tmp_path / "label.json"
    config.write_text(api.resolve_stage_configs(job, tmp_path / "ws")["label"].to_json())
    port = free_port()
    seen: dict[str, dict[str, float]] = {}

    def run(config, *, progress):
        seen["start"] = scrape(port)
        metrics.record_step(samples=5, seconds=1.0, progress=0.5)
        metrics.record_step(samples=5, seconds=2.0, progress=1.0)
        seen["end"] = scrape(port)
        return LabelSummary(pairs=10)

    module = types.ModuleType("fake_stage")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    monkeypatch.setitem(REGISTRY, "label", dataclasses.replace(REGISTRY["label"], module="fake_stage"))
    argv = [
        "label",
        "--config",
        str(config),
        "--termination-log",
        "",
        "--no-progress",
        "--metrics-port",
        str(port),
    ]
    assert cli.main(argv) == EXIT_OK
    assert seen["start"]["rlaif_trainer_steps_total"] == 0.0
    assert seen["end"]["rlaif_trainer_steps_total"] == 2.0
    assert seen["end"]["rlaif_trainer_samples_total"] == 10.0
    assert seen["end"]["rlaif_trainer_samples_per_second"] == 2.5
    assert seen["end"]["rlaif_trainer_progress_ratio"] == 1.0
    # The stage is over: the server is down and later stages in this process record nothing.
    assert metrics.active() is None
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_only_rank_zero_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert cli._serve_metrics(free_port()) is None
    assert metrics.active() is None


# -- real stages feed the recorder ----------------------------------------------------------------


def test_rl_steps_update_reward_kl_and_throughput(
    tmp_path: Path, tiny_model_dir: Path, recorder: metrics.TrainerMetrics
) -> None:
    pytest.importorskip("peft")
    from tests.unit.trainer.rl.test_loop import make_config, make_trainer

    cfg = make_config(tmp_path, tiny_model_dir, rl={"steps": 2, "checkpointEvery": 10})
    trainer = make_trainer(cfg, tiny_model_dir)
    history = trainer.train()
    got = values(recorder)
    last = history[-1]
    assert got["rlaif_trainer_steps_total"] == 2.0
    assert got["rlaif_trainer_samples_total"] == sum(m["samples"] for m in history) == 8
    assert got["rlaif_trainer_reward"] == pytest.approx(last["reward"])
    assert got["rlaif_trainer_kl"] == pytest.approx(last["kl"])
    assert got["rlaif_trainer_loss"] == pytest.approx(last["loss"])
    assert got["rlaif_trainer_samples_per_second"] == pytest.approx(last["samples"] / last["step_time_s"])
    assert got["rlaif_trainer_tokens_per_second"] == pytest.approx(last["tokens_per_s"])
    assert got["rlaif_trainer_progress_ratio"] == 1.0


def test_label_batches_update_samples_and_progress(tmp_path: Path, recorder: metrics.TrainerMetrics) -> None:
    from rlaif_trainer.feedback.labeling import label_pairs
    from rlaif_trainer.feedback.python import PythonLabeler

    pairs = [{"id": f"id{i}", "prompt": f"p{i}", "response_a": "a", "response_b": "bb"} for i in range(10)]
    out = tmp_path / "labels.jsonl"
    label_pairs(PythonLabeler(lambda p, a, b: 0.7), pairs[:4], out, chunk_size=4, progress=False)
    assert values(recorder)["rlaif_trainer_progress_ratio"] == 1.0
    # A restarted stage starts its progress at the pairs already labelled.
    restarted = metrics.TrainerMetrics()
    metrics.activate(restarted)
    seen: list[float | None] = []

    def labeler_fn(p, a, b):
        seen.append(restarted.gauges.get("progress_ratio"))
        return 0.7

    label_pairs(PythonLabeler(labeler_fn), pairs, out, chunk_size=4, progress=False)
    got = values(restarted)
    assert seen[0] == pytest.approx(0.4)
    assert got["rlaif_trainer_steps_total"] == 2.0  # 6 new pairs in chunks of 4
    assert got["rlaif_trainer_samples_total"] == 6.0
    assert got["rlaif_trainer_progress_ratio"] == 1.0
    assert got["rlaif_trainer_samples_per_second"] > 0
    assert "rlaif_trainer_reward" not in got and "rlaif_trainer_loss" not in got


def test_reward_steps_update_loss_tokens_and_progress(
    tiny_model_dir: Path, recorder: metrics.TrainerMetrics
) -> None:
    torch = pytest.importorskip("torch")
    from rlaif_trainer.modeling.loading import load_reward_model
    from rlaif_trainer.reward_model.training import train_reward_model

    torch.manual_seed(0)
    model, tok = load_reward_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    pairs = [
        {"prompt": f"q{i}", "response_a": "good answer", "response_b": "bad", "p_a": 0.9} for i in range(8)
    ]
    losses: list[float] = []
    train_reward_model(
        model,
        tok,
        pairs,
        batch_size=4,
        max_length=32,
        progress=False,
        on_step=lambda s, lv: losses.append(lv),
    )
    got = values(recorder)
    assert got["rlaif_trainer_steps_total"] == 2.0
    assert got["rlaif_trainer_samples_total"] == 8.0
    assert got["rlaif_trainer_loss"] == pytest.approx(losses[-1])
    assert got["rlaif_trainer_tokens_per_second"] > got["rlaif_trainer_samples_per_second"] > 0
    assert got["rlaif_trainer_progress_ratio"] == 1.0
    assert "rlaif_trainer_reward" not in got


def test_evaluate_judged_batches_update_samples(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, recorder: metrics.TrainerMetrics
) -> None:
    pytest.importorskip("peft")
    from rlaif_trainer.stages.evaluate import evaluate
    from tests.unit.trainer.stages.test_evaluate import _save_adapter

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    _save_adapter(tmp_path, tiny_model_dir, perturb=False)
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}."} for w in ("hi", "yes", "no")])
    cfg = make_stage_config(
        tmp_path,
        "evaluate",
        {
            "policy": {"model": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "dataset": {"prompts": "prompts.jsonl", "evalPrompts": "prompts.jsonl"},
            "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
            "rl": {"maxNewTokens": 4},
            "evaluation": {"samples": 3, "policy": str(tmp_path / "policy")},
            "stages": ["evaluate"],
        },
    )
    report, _, _ = evaluate(cfg, progress=False)
    got = values(recorder)
    assert report["prompts"] == 3
    # 3 prompts x 4 samples: one judge batch of 12 pairs, then one of the A/A null's 6 pairs
    assert got["rlaif_trainer_steps_total"] == 2.0
    assert got["rlaif_trainer_samples_total"] == 18.0
    assert got["rlaif_trainer_progress_ratio"] == 1.0


def test_docs_table_lists_every_trainer_family() -> None:
    guide = (Path(__file__).resolve().parents[3] / "docs" / "operator-guide.md").read_text()
    section = guide[guide.index("## Metrics reference") : guide.index("## Dashboards and alerts")]
    documented = set(re.findall(r"`(rlaif_trainer_[a-z_]+)`", section))
    exported = {f.name for f in metrics.TrainerMetrics().registry.collect()} | {
        metrics.PREFIX + name for name in metrics.GAUGES
    }
    # prometheus-client names counters without their _total suffix.
    assert {name.removesuffix("_total") for name in documented} == exported


def test_serve_makes_the_recorder_active_and_close_undoes_it() -> None:
    rec = metrics.serve(0, "127.0.0.1")
    try:
        assert metrics.active() is rec
    finally:
        rec.close()
    assert metrics.active() is None
    other = metrics.TrainerMetrics()
    metrics.activate(other)
    try:
        rec.close()  # closing a recorder that is not the active one leaves the active one alone
        assert metrics.active() is other
    finally:
        metrics.activate(None)


def test_remaining_seconds_at_the_process_own_rate(monkeypatch) -> None:
    """The estimate counts only this process's progress: a resumed stage's head start is no speed."""
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    rec = metrics.TrainerMetrics()
    rec.record_progress(0.4, pairs_labelled=40)  # found done on start
    assert rec.gauges.get("estimated_remaining_seconds") is None
    clock[0] = 110.0
    rec.record_progress(0.5, pairs_labelled=50)  # 10% in 10 s: 50% left takes 50 s
    assert rec.gauges.get("estimated_remaining_seconds") == pytest.approx(50.0)
    assert rec.gauges.get("pairs_labelled") == 50
