"""The stage contract end to end: every real stage's termination message, parsed by the operator's
own reconcile, fills ``status.results``.

The four stages run for real (tiny model built from a config, CPU) through ``rlaif-train <stage>``,
each writing its termination log as it would in a pod. The operator's reconcile then reads those
exact messages as the stage pods' termination messages (the in-memory Sim of the operator tests
stands in for the API server). A stage that renames a key it reports, or a results mapping that
reads a key no stage emits (as ``win_rate`` once did for ``win_rate_vs_initial``), fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import rlaif_api as api
from rlaif_api.contract import EXIT_OK, STAGE_ORDER, STAGES
from rlaif_api.summaries import result_keys
from rlaif_trainer import cli
from tests.unit.operator.sim import Sim, make_body

PROMPTS = [f"Write about topic number {i}." for i in range(16)]


def _spec(tmp_path: Path, model_dir: Path) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"t{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
    )
    # Human calibration pairs and reference responses, so that every results field has a source.
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text(
        json.dumps(
            {
                "id": "c1",
                "prompt": PROMPTS[0],
                "response_a": "Short.",
                "response_b": "A longer one.",
                "p_a": 1,
            }
        )
        + "\n"
    )
    references = tmp_path / "references.jsonl"
    references.write_text(
        "".join(json.dumps({"id": f"t{i}", "reference": p}) + "\n" for i, p in enumerate(PROMPTS))
    )
    return {
        "policy": {"model": str(model_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "dataset": {
            "prompts": str(prompts),
            "calibrationPairs": str(calibration),
            "evalReferences": str(references),
        },
        "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
        # The gate off: a random tiny model's labels cannot clear it, and this tests the contract.
        "rewardModel": {
            "epochs": 1,
            "batchSize": 4,
            "maxLength": 64,
            "evalFraction": 0.3,
            "minHeldOutAccuracy": 0,
        },
        "rl": {"steps": 2, "batchSize": 2, "samplesPerPrompt": 2, "maxNewTokens": 8},
        "evaluation": {"samples": 4},
        "seed": 3,
    }


def _run_stages(tmp_path: Path, spec: dict) -> dict[str, str]:
    job = api.RLAIFJob.model_validate({"metadata": {"name": "contract", "namespace": "ns"}, "spec": spec})
    configs = api.resolve_stage_configs(job, tmp_path / "ws")
    messages: dict[str, str] = {}
    for stage in STAGE_ORDER:
        path = tmp_path / f"{stage}.json"
        path.write_text(configs[stage].to_json())
        log = tmp_path / f"{stage}.termination-log"
        argv = [stage, "--config", str(path), "--termination-log", str(log), "--no-progress"]
        assert cli.main(argv) == EXIT_OK, log.read_text() if log.exists() else stage
        messages[stage] = log.read_text()
    return messages


def test_real_stage_messages_fill_status_results(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    spec = _spec(tmp_path, tiny_model_dir)
    messages = _run_stages(tmp_path, spec)

    sim = Sim(make_body("contract", spec))
    sim.run_to_end(messages)  # each stage pod ends with the message its stage really wrote
    status = sim.status()
    assert status["phase"] == "Succeeded", status

    sent = {stage: json.loads(text) for stage, text in messages.items()}
    results = status["results"]
    expected = {
        "labelerPositionConsistency": sent["label"]["consistency_rate"],
        "rewardModelAccuracy": sent["reward"]["accuracy"],
        "finalReward": sent["rl"]["final_reward"],
        "finalKl": sent["rl"]["final_kl"],
        "winRateVsInitial": sent["evaluate"]["win_rate_vs_initial"],
        "winRateCiLow": sent["evaluate"]["win_rate_ci_low"],
        "winRateCiHigh": sent["evaluate"]["win_rate_ci_high"],
        "rewardModelAccuracyCiLow": sent["reward"]["accuracy_ci_low"],
        "rewardGain": sent["evaluate"]["reward_gain"],
        "rewardGainCiLow": sent["evaluate"]["reward_gain_ci_low"],
        "aaWinRate": sent["evaluate"]["aa_win_rate"],
    }
    for field, value in expected.items():
        assert isinstance(value, float), f"{field}: the stage reported {value!r}, not a number"
        assert results.get(field) == pytest.approx(value), f"status.results.{field}"
    assert results["winRateCiLow"] <= results["winRateVsInitial"] <= results["winRateCiHigh"]
    # Every field the contract maps reached the status: nothing is declared that no stage emits.
    mapped = {f for s in STAGES.values() for f in result_keys(s.summary).values()}
    assert {api.ResultsStatus.model_fields[f].alias or f for f in mapped} <= set(results)
    # And the stage metrics are the messages, less the stage name.
    for stage in STAGE_ORDER:
        metrics = status["stages"][stage]["metrics"]
        assert metrics == {k: v for k, v in sent[stage].items() if k != "stage"}
    # Every key a real stage reports is a declared field of its summary model, and the message is
    # that model's serialisation: a misspelt field would pass as an extra key and never reach
    # status.results, so it fails here instead.
    for stage in STAGE_ORDER:
        model = STAGES[stage].summary
        undeclared = set(sent[stage]) - {"stage"} - set(model.model_fields)
        assert not undeclared, f"{stage} reports keys its {model.__name__} does not declare: {undeclared}"
        assert {"stage": stage, **model.model_validate(sent[stage]).to_message()} == sent[stage]
