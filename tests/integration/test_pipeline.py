"""``rlaif-train pipeline`` end to end on a tiny model: label -> reward -> rl -> evaluate, no Kubernetes.

The job is a real RLAIFJob manifest (YAML) whose relative dataset paths resolve against its own
directory, exactly as the operator's resolver does; the labeler and judge are the tiny model itself
in pointwise mode. Every artifact and the summary are checked, then a second run must skip every
stage. (This is "integration" of the trainer's stages; it needs no control plane.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

JOB = """\
apiVersion: rlaif.dev/v1alpha1
kind: RLAIFJob
metadata:
  name: tiny-e2e
  namespace: test
spec:
  seed: 11
  policy:
    model: {model}
    lora: {{r: 4, alpha: 8, dropout: 0.0}}
  dataset:
    prompts: data/prompts.jsonl            # relative to this file
    evalPrompts: data/eval.jsonl
  labeler:
    mode: pointwise
    principles:
      - Is the response helpful?
      - Is the response short?
    batchSize: 8
  rewardModel:
    lora: {{r: 4, alpha: 8}}
    epochs: 1
    batchSize: 4
    learningRate: 0.001
    evalFraction: 0.25
    minHeldOutAccuracy: 0                  # the plumbing, not the model: 12 random-model labels
  rl:
    algorithm: rloo
    steps: 3
    batchSize: 4
    samplesPerPrompt: 2
    maxNewTokens: 8
    learningRate: 0.01
    checkpointEvery: 2
  evaluation:
    samples: 6
  stages: [label, reward, rl, evaluate]
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlaif_trainer.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_pipeline_runs_every_stage_then_skips_them(tmp_path: Path, tiny_model: Path, monkeypatch, capsys):
    from rlaif_trainer.pipeline import run_pipeline

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    jobdir = tmp_path / "job"
    (jobdir / "data").mkdir(parents=True)
    prompts = [
        f"Summarize: the council met on day {i} and approved a new park near the river." for i in range(12)
    ]
    (jobdir / "data" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    evals = [f"Explain why the sky is blue, version {i}." for i in range(6)]
    (jobdir / "data" / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in evals))
    manifest = jobdir / "job.yaml"
    manifest.write_text(JOB.format(model=tiny_model))
    workspace = tmp_path / "ws"

    t0 = time.perf_counter()
    result = run_pipeline(manifest, workspace, progress=False)
    wall = time.perf_counter() - t0
    assert wall < 120, f"pipeline took {wall:.0f}s"

    root = workspace / "test" / "tiny-e2e"
    assert result["workspace"] == str(root)
    # Every stage's artifact, finished atomically (DONE holds the stage summary).
    for sub in ("labels", "reward_model", "policy", "eval"):
        assert (root / sub / "DONE").is_file(), sub
        assert not (root / f"{sub}.partial").exists(), sub
    labels = [json.loads(x) for x in (root / "labels" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 12 and all(0.0 <= r["p_a"] <= 1.0 for r in labels)
    assert any((root / "reward_model").glob("*.safetensors"))
    assert (root / "policy" / "adapter" / "adapter_config.json").is_file()
    assert len((root / "policy" / "metrics.jsonl").read_text().splitlines()) == 3
    for name in ("report.json", "samples.jsonl", "training_curves.png"):
        assert (root / "eval" / name).is_file(), name
    # The configs the stages ran with are the operator's resolution, paths anchored at the YAML's dir.
    rl_cfg = json.loads((root / "configs" / "rl.json").read_text())
    assert rl_cfg["spec"]["dataset"]["prompts"] == str((jobdir / "data" / "prompts.jsonl").resolve())
    assert rl_cfg["artifacts"]["policy"] == str(root / "policy")

    s = result["summaries"]
    assert s["reward"]["accuracy"] is not None and 0.0 <= s["reward"]["accuracy"] <= 1.0
    assert s["rl"]["steps"] == 3 and s["rl"]["reward_source"] == "rewardModel"
    assert s["rl"]["final_kl"] is not None
    ev = s["evaluate"]
    assert ev["prompts"] == 6
    assert ev["win_rate_ci_low"] <= ev["win_rate_vs_initial"] <= ev["win_rate_ci_high"]
    assert [r["status"] for r in result["stages"]] == ["ran"] * 4
    table = capsys.readouterr().out
    for needle in ("label", "reward", "rl", "evaluate", "held-out accuracy", "win rate vs initial", "95% CI"):
        assert needle in table, needle
    saved = json.loads((root / "pipeline_summary.json").read_text())
    assert saved["summaries"]["evaluate"]["win_rate_vs_initial"] == ev["win_rate_vs_initial"]

    # A second run finds every stage done and reuses the saved summaries.
    again = run_pipeline(manifest, workspace, progress=False)
    assert [r["status"] for r in again["stages"]] == ["skipped (done)"] * 4
    assert again["summaries"]["evaluate"]["win_rate_vs_initial"] == ev["win_rate_vs_initial"]


def test_pipeline_rejects_an_invalid_manifest(tmp_path: Path):
    from rlaif_trainer.errors import BadInputError
    from rlaif_trainer.pipeline import run_pipeline

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: rlaif.dev/v1alpha1\nkind: RLAIFJob\nmetadata: {name: x}\nspec:\n  policy: {model: m}\n  dataset: {prompts: p.jsonl}\n  stages: [rl, label]\n"
    )
    with pytest.raises(BadInputError, match="stages"):
        run_pipeline(bad, tmp_path / "ws", progress=False)
