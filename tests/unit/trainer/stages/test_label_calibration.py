"""The label stage with dataset.calibrationPairs: the labeler is measured against the human pairs and
the figures reach its summary (and from there status.results)."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif_api.contract import RESULT_KEYS
from rlaif_trainer.stages import label

from ..conftest import make_stage_config, write_jsonl


def test_label_stage_reports_the_calibration(tmp_path: Path, tiny_model_dir: Path):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about topic {i}."} for i in range(5)])
    write_jsonl(
        tmp_path / "calibration.jsonl",
        [
            {
                "id": "c1",
                "prompt": "Summarize: the river.",
                "response_a": "A river.",
                "response_b": "Bananas.",
                "p_a": 1.0,
                "flaw": "off_topic",
            },
            {
                "id": "c2",
                "prompt": "Summarize: the park.",
                "response_a": "The",
                "response_b": "A park.",
                "p_a": 0.0,
                "flaw": "truncated",
            },
        ],
    )
    spec = {
        "policy": {"model": str(tiny_model_dir)},
        "dataset": {"prompts": "prompts.jsonl", "calibrationPairs": "calibration.jsonl"},
        "labeler": {"batchSize": 4, "mode": "pairwise"},
        "rl": {"maxNewTokens": 6},
        "stages": ["label"],
    }
    cfg = make_stage_config(tmp_path, "label", spec)
    summary = label.run(cfg, progress=False)
    summary = summary.to_message()
    assert summary["calibration_pairs"] == 2
    assert 0 <= summary["calibration_alignment_ci_low"] <= summary["calibration_alignment"] <= 1
    assert 0 <= summary["calibration_position_bias_rate"] <= 1  # pairwise: measured in both orders
    assert 0 <= summary["calibration_mean_confidence"] <= 1
    out = Path(cfg.artifacts.labels)
    records = [json.loads(x) for x in (out / "calibration.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["c1", "c2"] and {r["flaw"] for r in records} == {
        "off_topic",
        "truncated",
    }
    report = json.loads((out / "calibration_report.json").read_text())
    assert set(report["alignment_by_flaw"]) == {"off_topic", "truncated"}
    # The operator copies these into status.results.
    assert RESULT_KEYS["label"]["calibration_alignment"] == "labeler_alignment"
    assert RESULT_KEYS["label"]["calibration_position_bias_rate"] == "labeler_position_bias_rate"
