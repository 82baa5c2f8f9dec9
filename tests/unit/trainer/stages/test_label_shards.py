"""Sharded labeling through the real label stage: shards by pair id, resume, and the merge.

The labeler is a Python callable (the ``python`` provider, real stage code around it), so these
tests need no model; the last one samples candidates with the tiny model, as a cluster run would.
Pods are played by setting ``$JOB_COMPLETION_INDEX`` as the Job controller does, in-process, and
in the concurrency test by two real ``rlaif-train label`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rlaif_api.summaries import LabelSummary
from rlaif_trainer.feedback.sharding import ENV_COMPLETION_INDEX, shard_dir, shard_of
from rlaif_trainer.stages import label

from ..conftest import make_stage_config, write_jsonl

CALLS: list[str] = []


def _pref(prompt: str, a: str, b: str) -> float:
    CALLS.append(prompt)
    return 0.9 if len(a) < len(b) else 0.2


def _pairs(n: int) -> list[dict]:
    return [
        {"id": f"pair-{i}", "prompt": f"prompt {i}", "response_a": "a " * (i % 4 + 1), "response_b": "b " * 3}
        for i in range(n)
    ]


@pytest.fixture
def rules(monkeypatch):
    mod = types.ModuleType("shard_rules")
    mod.pref = _pref  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shard_rules", mod)
    CALLS.clear()
    return mod


def _config(tmp_path: Path, shards: int, n: int = 23, name: str = "job"):
    workdir = tmp_path / name
    write_jsonl(workdir / "pairs.jsonl", _pairs(n))
    write_jsonl(workdir / "prompts.jsonl", [{"prompt": "unused"}])
    spec = {
        "policy": {"model": "unused"},
        "dataset": {"pairs": "pairs.jsonl", "prompts": "prompts.jsonl"},
        "labeler": {"provider": "python", "callable": "shard_rules:pref", "batchSize": 2},
        "resources": {"label": {"shards": shards}},
        "stages": ["label"],
    }
    return make_stage_config(workdir, "label", spec)


def _labels(cfg) -> list[dict]:
    return [json.loads(x) for x in (Path(cfg.artifacts.labels) / "labels.jsonl").read_text().splitlines()]


def test_pods_label_their_shards_and_the_last_merges(tmp_path: Path, rules, monkeypatch):
    cfg = _config(tmp_path, 3)
    reports = []
    for index in (2, 0, 1):  # the pods finish in any order
        monkeypatch.setenv(ENV_COMPLETION_INDEX, str(index))
        reports.append(label.run(cfg, progress=False))
    first, second, last = reports
    assert first.shard == 2 and second.shard == 0 and last.shard is None  # only the last merged
    assert first.pairs + second.pairs + len(select_ids(1, 3, 23)) == 23
    assert last.shards == 3 and last.pairs == 23
    assert last.labelled_now == 23 and len(CALLS) == 2 * 23  # each pair once, in both orders
    rows = _labels(cfg)
    assert [r["id"] for r in rows] == [p["id"] for p in _pairs(23)]  # input order, none lost or doubled
    for index in range(3):
        shard_rows = [json.loads(x) for x in (shard_dir(cfg.artifacts.labels, index) / "labels.jsonl").open()]
        assert {r["id"] for r in shard_rows} == set(select_ids(index, 3, 23))
    assert json.loads((Path(cfg.artifacts.labels) / "DONE").read_text()) == last.to_message()

    # the same labels as one unsharded pod, and a summary that covers every pair the same way
    monkeypatch.delenv(ENV_COMPLETION_INDEX)
    whole = _config(tmp_path, 1, name="unsharded")
    one = label.run(whole, progress=False)

    def strip(rs):  # ``source`` names each job's own copy of the pairs file
        return [{k: v for k, v in r.items() if k != "source"} for r in rs]

    assert strip(_labels(whole)) == strip(rows)
    assert one.model_dump(
        include={"pairs", "consistency_rate", "mean_confidence", "mean_p_a"}
    ) == last.model_dump(include={"pairs", "consistency_rate", "mean_confidence", "mean_p_a"})
    # a pod started after the merge (a retry) reports the merged stage
    monkeypatch.setenv(ENV_COMPLETION_INDEX, "1")
    again = label.run(cfg, progress=False)
    assert again.resumed is True and again.pairs == 23 and again.shard is None


def select_ids(index: int, shards: int, n: int) -> list[str]:
    return [p["id"] for p in _pairs(n) if shard_of(p["id"], shards) == index]


def test_a_retried_shard_resumes_and_the_merge_loses_nothing(tmp_path: Path, rules, monkeypatch):
    cfg = _config(tmp_path, 2, n=80)

    class Killed(Exception):
        pass

    def dies_midway(prompt, a, b):
        if len(CALLS) >= 40:  # in its second chunk (16 pairs, 2 calls each): the first is written
            raise Killed
        return _pref(prompt, a, b)

    monkeypatch.setenv(ENV_COMPLETION_INDEX, "0")
    assert label.run(cfg, progress=False).shard == 0
    rules.pref = dies_midway
    CALLS.clear()
    monkeypatch.setenv(ENV_COMPLETION_INDEX, "1")
    with pytest.raises(Killed):
        label.run(cfg, progress=False)
    partial = Path(str(shard_dir(cfg.artifacts.labels, 1)) + ".partial") / "labels.jsonl"
    already = {json.loads(x)["id"] for x in partial.read_text().splitlines()}
    assert already, "the killed shard kept what it labelled"
    # the retried attempt: both pods again; shard 0 is done, shard 1 labels only what is left
    rules.pref = _pref
    CALLS.clear()
    monkeypatch.setenv(ENV_COMPLETION_INDEX, "0")
    assert label.run(cfg, progress=False).resumed is True
    monkeypatch.setenv(ENV_COMPLETION_INDEX, "1")
    merged = label.run(cfg, progress=False)
    todo = set(select_ids(1, 2, 80)) - already
    assert {p.split()[-1] for p in CALLS} == {i.split("-")[-1] for i in todo}
    assert merged.pairs == 80 and merged.shards == 2 and merged.labelled_now == 80 - len(already)
    rows = _labels(cfg)
    assert [r["id"] for r in rows] == [p["id"] for p in _pairs(80)]


def test_a_local_run_labels_every_shard_and_merges(tmp_path: Path, rules):
    cfg = _config(tmp_path, 4, n=11)
    summary = label.run(cfg, progress=False)
    assert isinstance(summary, LabelSummary) and summary.shards == 4 and summary.pairs == 11
    assert [r["id"] for r in _labels(cfg)] == [p["id"] for p in _pairs(11)]


def test_two_real_processes_merge_once(tmp_path: Path):
    """Two ``rlaif-train label`` processes, one per shard, started together: both succeed, each
    labels its own pairs, and exactly one of them reports the merged stage."""
    (tmp_path / "shard_rules.py").write_text(
        "import time\n\ndef pref(prompt, a, b):\n    time.sleep(0.002)\n    return 0.9 if len(a) < len(b) else 0.2\n"
    )
    cfg = _config(tmp_path, 2, n=200)
    (tmp_path / "label.json").write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlaif_trainer.cli",
                "label",
                "--config",
                str(tmp_path / "label.json"),
                "--termination-log",
                str(tmp_path / f"term{i}"),
                "--no-progress",
            ],
            env={**env, ENV_COMPLETION_INDEX: str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    messages = [json.loads((tmp_path / f"term{i}").read_text()) for i in range(2)]
    merged = [m for m in messages if "shard" not in m]
    assert len(merged) == 1 and merged[0]["pairs"] == 200 and merged[0]["shards"] == 2
    assert [r["id"] for r in _labels(cfg)] == [p["id"] for p in _pairs(200)]


def test_sharded_candidates_are_sampled_per_shard_and_merged(tmp_path: Path, tiny_model_dir: Path):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about topic {i}."} for i in range(9)])
    spec = {
        "policy": {"model": str(tiny_model_dir)},
        "dataset": {"prompts": "prompts.jsonl"},
        "labeler": {"batchSize": 4},
        "rl": {"maxNewTokens": 4},
        "resources": {"label": {"shards": 2}},
        "stages": ["label"],
    }
    cfg = make_stage_config(tmp_path, "label", spec)
    summary = label.run(cfg, progress=False)
    assert summary.shards == 2 and summary.pairs == 8 and summary.candidates == "sampled"
    cands = [
        json.loads(x) for x in (Path(cfg.artifacts.candidates) / "candidates.jsonl").read_text().splitlines()
    ]
    assert [c["id"] for c in cands] == [r["id"] for r in _labels(cfg)]
    assert len({c["id"] for c in cands}) == 8
