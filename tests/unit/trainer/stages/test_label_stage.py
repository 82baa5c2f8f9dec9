"""The label stage: candidates, append-only labels with resume, the summary, and bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from rlaif_api.contract import EXIT_BAD_INPUT
from rlaif_api.summaries import LabelSummary
from rlaif_trainer import cli
from rlaif_trainer.data.records import JsonlAppender
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.labeling import label_pairs
from rlaif_trainer.feedback.python import PythonLabeler
from rlaif_trainer.stages import label

from ..conftest import make_stage_config, write_jsonl


def _pairs(n: int) -> list[dict]:
    return [
        {
            "id": f"id{i}",
            "prompt": f"prompt {i}",
            "response_a": "a " * (i % 3 + 1),
            "response_b": "b " * 5,
            "source": f"f.jsonl:{i + 1}",
        }
        for i in range(n)
    ]


def test_resume_skips_labelled_pairs(tmp_path: Path):
    calls: list[str] = []

    class Crash(Exception):
        pass

    def pref(prompt, a, b):
        calls.append(prompt)
        if len(calls) == 9:  # crash in the third chunk (both orders: 2 calls per pair)
            raise Crash
        return 0.7

    out = tmp_path / "labels.jsonl"
    pairs = _pairs(10)
    with pytest.raises(Crash):
        label_pairs(PythonLabeler(pref), pairs, out, chunk_size=2, progress=False)
    done_first = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert done_first == ["id0", "id1", "id2", "id3"]
    # a torn last line from a crash mid-write is dropped on restart
    with open(out, "a") as fh:
        fh.write('{"id": "id4", "p_a"')
    calls.clear()
    records, timing = label_pairs(
        PythonLabeler(lambda p, a, b: calls.append(p) or 0.7), pairs, out, chunk_size=2, progress=False
    )
    assert sorted(set(calls)) == sorted(f"prompt {i}" for i in range(4, 10))  # only the unlabelled ones
    assert timing["labelled_now"] == 6
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"id{i}" for i in range(10)]
    assert [r["id"] for r in records] == [p["id"] for p in pairs]
    assert all(r["p_a"] == pytest.approx(0.5) for r in lines)  # 0.7 both orders debiases to 0.5


def test_jsonl_appender_keeps_order_and_reloads(tmp_path: Path):
    p = tmp_path / "x.jsonl"
    with JsonlAppender(p) as a:
        a.write_many([{"id": "1", "v": 1}, {"id": "2", "v": 2}])
    with JsonlAppender(p) as a:
        assert "1" in a and "2" in a and len(a) == 2


def _spec(tmp_path: Path, model_dir: Path, **labeler) -> dict:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about topic {i}."} for i in range(7)])
    return {
        "policy": {"model": str(model_dir)},
        "dataset": {"prompts": "prompts.jsonl"},
        "labeler": {"batchSize": 4, **labeler},
        "rl": {"maxNewTokens": 6},
        "stages": ["label"],
    }


def test_label_stage_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path):
    cfg = make_stage_config(
        tmp_path, "label", _spec(tmp_path, tiny_model_dir, mode="pointwise", principles=["Relevant?"])
    )
    summary = label.run(cfg, progress=False)
    assert isinstance(summary, LabelSummary)
    # 7 prompts: the last 10% (1 prompt) is held out for evaluation
    assert summary.pairs == 6 and summary.mode == "pointwise"
    assert summary.consistency_rate is None  # pointwise: no position bias to measure
    assert summary.to_message()["consistency_rate"] is None  # reported as null, not left out
    assert summary.mean_confidence is not None and 0 <= summary.mean_confidence <= 1
    assert summary.pairs_per_s is not None and summary.pairs_per_s > 0
    assert len(json.dumps(summary.to_message())) < 4096
    cand = Path(cfg.artifacts.candidates)
    lab = Path(cfg.artifacts.labels)
    assert (cand / "DONE").is_file() and (lab / "DONE").is_file()
    # DONE holds the same serialisation as the termination message
    assert json.loads((lab / "DONE").read_text()) == summary.to_message()
    assert not Path(str(lab) + ".partial").exists()
    rows = [json.loads(x) for x in (lab / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert {
            "id",
            "prompt",
            "response_a",
            "response_b",
            "p_a",
            "p_a_ab",
            "p_a_ba",
            "consistent",
            "mode",
            "labeler",
            "source",
        } <= set(r)
        assert 0 < r["p_a"] < 1 and r["source"].endswith(tuple(f":{i}" for i in range(1, 7)))
    cands = [json.loads(x) for x in (cand / "candidates.jsonl").read_text().splitlines()]
    assert [c["id"] for c in cands] == [r["id"] for r in rows]
    # a finished stage is not redone
    again = label.run(cfg, progress=False)
    assert isinstance(again, LabelSummary) and again.resumed is True
    assert again.model_dump(exclude={"resumed"}) == summary.model_dump(exclude={"resumed"})


def test_candidates_are_seeded_and_resumable(tmp_path: Path, tiny_model_and_tokenizer):
    from rlaif_trainer.feedback.candidates import generate_candidates

    model, tok = tiny_model_and_tokenizer
    prompts = [{"id": f"q{i}", "prompt": f"Tell me about {i}.", "source": f"p:{i}"} for i in range(5)]
    full = generate_candidates(
        model, tok, prompts, tmp_path / "a.jsonl", max_new_tokens=5, batch_size=2, seed=3, progress=False
    )
    # simulate an interruption after the first batch, then resume
    part = tmp_path / "b.jsonl"
    part.write_text("".join(json.dumps(r) + "\n" for r in full[:2]))
    resumed = generate_candidates(
        model, tok, prompts, part, max_new_tokens=5, batch_size=2, seed=3, progress=False
    )
    assert resumed == full
    assert any(r["response_a"] != r["response_b"] for r in full)  # two independent samples
    other = generate_candidates(
        model, tok, prompts, tmp_path / "c.jsonl", max_new_tokens=5, batch_size=2, seed=4, progress=False
    )
    assert [r["response_a"] for r in other] != [r["response_a"] for r in full]


def _cli(config, tmp_path: Path) -> tuple[int, str]:
    cfg_path = tmp_path / "label.json"
    cfg_path.write_text(config.to_json())
    log = tmp_path / "termination-log"
    code = cli.main(["label", "--config", str(cfg_path), "--termination-log", str(log), "--no-progress"])
    return code, log.read_text()


def test_bad_jsonl_line_exits_with_the_permanent_code(tmp_path: Path, tiny_model_dir: Path):
    spec = _spec(tmp_path, tiny_model_dir)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{not json\n')
    code, msg = _cli(make_stage_config(tmp_path, "label", spec), tmp_path)
    assert code == EXIT_BAD_INPUT
    assert json.loads(msg)["permanent"] is True and "prompts.jsonl:3" in msg


def test_missing_file_and_missing_field_are_bad_input(tmp_path: Path, tiny_model_dir: Path):
    spec = _spec(tmp_path, tiny_model_dir)
    spec["dataset"]["pairs"] = "pairs.jsonl"
    code, msg = _cli(make_stage_config(tmp_path, "label", spec), tmp_path)
    assert code == EXIT_BAD_INPUT and "pairs.jsonl" in msg and "does not exist" in msg
    write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b"}, {"prompt": "p"}]
    )
    code, msg = _cli(make_stage_config(tmp_path, "label", spec), tmp_path)
    assert code == EXIT_BAD_INPUT and "pairs.jsonl:2" in msg and "response_a" in msg


def test_prompt_too_long_is_bad_input(tmp_path: Path, tiny_model_dir: Path):
    spec = _spec(tmp_path, tiny_model_dir)
    spec["policy"]["maxPromptLength"] = 32
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "short"}, {"prompt": "word " * 100}, {"prompt": "x"}])
    code, msg = _cli(make_stage_config(tmp_path, "label", spec), tmp_path)
    assert code == EXIT_BAD_INPUT and "prompts.jsonl:2" in msg and "maxPromptLength" in msg


def test_pair_too_long_for_the_labeler_context_names_the_line(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
):
    spec = _spec(tmp_path, tiny_model_dir)
    spec["dataset"]["pairs"] = "pairs.jsonl"
    write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "p", "response_a": "a", "response_b": "b"},
            {"prompt": "p", "response_a": "word " * 3000, "response_b": "b"},
        ],
    )
    cfg = make_stage_config(tmp_path, "label", spec)
    with pytest.raises(BadInputError, match=r"pairs.jsonl:2.*context of 2048"):
        label.run(cfg, progress=False)


def test_stage_with_a_python_labeler(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    mod = types.ModuleType("count_rules")
    mod.pref = lambda p, a, b: 0.9 if len(a) < len(b) else 0.1
    monkeypatch.setitem(sys.modules, "count_rules", mod)
    spec = _spec(tmp_path, tiny_model_dir, provider="python", callable="count_rules:pref")
    spec["dataset"]["pairs"] = "pairs.jsonl"
    write_jsonl(tmp_path / "pairs.jsonl", _pairs(5))
    summary = label.run(make_stage_config(tmp_path, "label", spec), progress=False)
    assert summary.pairs == 5 and summary.consistency_rate == 1.0 and summary.candidates == "dataset.pairs"
