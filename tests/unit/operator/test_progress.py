"""Live progress in status: the operator's scrape of a real trainer metrics endpoint, the pure
write decision (at most one per job per 30 s, none when nothing changed), and the reconcile core
writing ``status.stages.<stage>.progress`` and ``status.progressPercentage``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rlaif_api.status import ProgressMetric, StageProgress
from rlaif_operator.controller import Indexes
from rlaif_operator.observe import JobInfo, PodInfo
from rlaif_operator.progress import (
    PROGRESS_WRITE_SECONDS,
    ProgressScraper,
    Sample,
    combine,
    next_progress,
    parse_metrics,
    write_due_in,
)
from rlaif_operator.timing import fmt_time
from tests.unit.operator.sim import T0, Sim

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A real trainer process: the trainer's own metrics server (rlaif_trainer.metrics.serve, as
# `rlaif-train <stage> --metrics-port` starts it), fed by the label stage's real labelling loop.
TRAINER = r"""
import sys, time
from rlaif_trainer import metrics
from rlaif_trainer.feedback.labeling import label_pairs
from rlaif_trainer.feedback.python import PythonLabeler

metrics.serve(int(sys.argv[1]), "127.0.0.1")
pairs = [{"id": f"p{i}", "prompt": f"q{i}", "response_a": "a", "response_b": "bb"} for i in range(40)]
def slow(prompt, a, b):
    time.sleep(0.01)
    return 0.8
label_pairs(PythonLabeler(slow), pairs[:30], sys.argv[2], chunk_size=10, progress=False)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def trainer_endpoint(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(port), str(tmp_path / "labels.jsonl")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "trainer") + os.pathsep + str(ROOT / "api")},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_scrape_reads_a_real_trainer_endpoint(trainer_endpoint: int) -> None:
    """The operator's scraper against a trainer process's /metrics, found through the pod index."""

    class Queue:
        def __init__(self) -> None:
            self.keys: list[Any] = []
            self.delays: list[float] = []

        def enqueue(self, key: Any, delay: float = 0.0) -> None:
            self.keys.append(key)
            self.delays.append(delay)

    key = ("ns", "demo")
    job = JobInfo(name="demo-label-1", stage="label", attempt=1, owner_uid="u")
    pod = PodInfo(name="demo-label-1-x", job_name="demo-label-1", phase="Running", ip="127.0.0.1")
    queue = Queue()
    queue.indexes = Indexes(  # type: ignore[attr-defined]
        jobs={key: [{}]}, children={key: [job]}, pods={("ns", "demo-label-1"): [pod]}, claims={}
    )
    scraper = ProgressScraper(queue, trainer_endpoint)  # type: ignore[arg-type]

    async def rounds() -> None:
        await scraper.scrape_once()
        await scraper.scrape_once()  # the same figures: no second pass queued
        await scraper._session.close()

    asyncio.run(rounds())
    sample = scraper.samples(key)["label"]
    assert sample.ratio == pytest.approx(30 / 30)  # the labelling loop finished its 30 pairs
    assert dict(sample.metrics)["pairsLabelled"] == 30
    assert "samplesPerSecond" in dict(sample.metrics)
    assert "reward" not in dict(sample.metrics)  # a label pod reports no reward, not a reward of 0
    assert sample.remaining_seconds == 0
    assert queue.keys == [key]
    assert 0 <= queue.delays[0] < 30 and queue.delays[0] == scraper.slot(key)  # its slot in the round
    assert scraper.scrapes == 2 and scraper.failures == 0


def test_an_unreachable_pod_is_no_error() -> None:
    key = ("ns", "demo")
    port = _free_port()  # nothing listens there

    class Queue:
        def __init__(self) -> None:
            self.keys: list[Any] = []

        def enqueue(self, k: Any, delay: float = 0.0) -> None:
            self.keys.append(k)

    queue = Queue()
    queue.indexes = Indexes(  # type: ignore[attr-defined]
        jobs={key: [{}]},
        children={key: [JobInfo(name="demo-rl-1", stage="rl", attempt=1)]},
        pods={
            ("ns", "demo-rl-1"): [PodInfo(name="p", job_name="demo-rl-1", phase="Running", ip="127.0.0.1")]
        },
        claims={},
    )
    scraper = ProgressScraper(queue, port, timeout=1.0)  # type: ignore[arg-type]

    async def once() -> None:
        await scraper.scrape_once()
        await scraper._session.close()

    asyncio.run(once())
    assert scraper.failures == 1 and scraper.samples(key) == {} and queue.keys == []


def test_parse_and_combine_shards() -> None:
    text = (
        "# TYPE rlaif_trainer_progress_ratio gauge\nrlaif_trainer_progress_ratio 0.5\n"
        "# TYPE rlaif_trainer_estimated_remaining_seconds gauge\nrlaif_trainer_estimated_remaining_seconds 12.6\n"
        "# TYPE rlaif_trainer_reward gauge\nrlaif_trainer_reward 0.25\n"
        "# TYPE rlaif_trainer_kl gauge\nrlaif_trainer_kl 0.0123456\n"
        "# TYPE rlaif_trainer_steps counter\nrlaif_trainer_steps_total 7.0\n"
    )
    sample = parse_metrics(text)
    assert sample == Sample(ratio=0.5, remaining_seconds=12.6, metrics=(("reward", 0.25), ("kl", 0.0123456)))
    shards = combine(
        [
            Sample(0.2, 40.0, (("pairsLabelled", 10.0), ("samplesPerSecond", 1.0))),
            Sample(0.6, 10.0, (("pairsLabelled", 30.0), ("samplesPerSecond", 2.0))),
        ]
    )
    assert shards == Sample(0.4, 40.0, (("pairsLabelled", 40.0), ("samplesPerSecond", 3.0)))
    assert combine([]) is None


def _progress(pct: int, at: float, remaining: int = 10) -> StageProgress:
    return StageProgress(
        progress_percentage=pct,
        estimated_remaining_seconds=remaining,
        metrics=[ProgressMetric(name="loss", value="0.5")],
        last_updated_time=fmt_time(T0 + timedelta(seconds=at)),
    )


def test_the_write_decision_is_bounded() -> None:
    sample = Sample(0.4, 10.0, (("loss", 0.5),))
    first = next_progress(None, sample, T0)
    assert first is not None and first.progress_percentage == 40 and first.last_updated_time == fmt_time(T0)
    assert first.metrics == [ProgressMetric(name="loss", value="0.5")]
    assert next_progress(first, None, T0 + timedelta(seconds=99)) is first  # nothing scraped: keep
    later = Sample(0.5, 8.0, (("loss", 0.4),))
    # changed, but within 30 s of the last write: no write
    assert next_progress(first, later, T0 + timedelta(seconds=PROGRESS_WRITE_SECONDS - 0.5)) is first
    # changed and 30 s on: written, stamped now
    due = next_progress(first, later, T0 + timedelta(seconds=PROGRESS_WRITE_SECONDS))
    assert due is not None and due.progress_percentage == 50 and due.estimated_remaining_seconds == 8
    assert due.last_updated_time == fmt_time(T0 + timedelta(seconds=PROGRESS_WRITE_SECONDS))
    # unchanged an hour later: still no write (the old time stays)
    assert next_progress(first, sample, T0 + timedelta(hours=1)) is first
    assert next_progress(None, Sample(1.2, -3.0), T0).progress_percentage == 100  # type: ignore[union-attr]


def _writes(sim: Sim) -> int:
    return sum(1 for p in sim.plans if p.status is not None)


def test_reconcile_writes_progress_at_most_every_30s_and_only_when_it_changed() -> None:
    sim = Sim()
    samples: dict[str, Sample] = {}
    plain = sim.observed
    sim.observed = lambda: dataclasses.replace(plain(), progress=dict(samples))  # type: ignore[method-assign]
    sim.step()  # creates the label Job
    (job,) = sim.active()
    sim.pods[job] = PodInfo(name=f"{job}-x", job_name=job, phase="Running", ip="10.0.0.7")
    sim.step()
    before = _writes(sim)
    # passes every 5 s for 2 minutes, the figures moving every pass: 4 writes, not 24
    for i in range(24):
        samples["label"] = Sample(
            ratio=i / 40, remaining_seconds=240.0 - 10 * i, metrics=(("pairsLabelled", i),)
        )
        sim.advance(5)
        sim.step()
    assert _writes(sim) - before == 4
    st = sim.status()
    progress = st["stages"]["label"]["progress"]
    assert progress["progressPercentage"] == st["progressPercentage"] > 0
    assert {m["name"] for m in progress["metrics"]} == {"pairsLabelled"}
    assert set(progress) == {"progressPercentage", "estimatedRemainingSeconds", "metrics", "lastUpdatedTime"}
    # figures that stop moving cost no write, however long
    before = _writes(sim)
    for _ in range(20):
        sim.advance(60)
        sim.step()
    assert _writes(sim) == before + 1  # the last moved figures, once their 30 s are up
    assert json.dumps(sim.status()).count("progressPercentage") == 2
    # success: 100% in the same write as the success; the printer column empties
    sim.finish(job, 0, {"stage": "label", "pairs": 40})
    sim.step()
    st = sim.status()
    assert st["stages"]["label"]["progress"]["progressPercentage"] == 100
    assert st["stages"]["label"]["progress"]["estimatedRemainingSeconds"] == 0
    assert "progressPercentage" not in st or st.get("progressPercentage") is None


def test_no_scrape_without_a_metrics_port() -> None:
    from rlaif_operator.controller import Controller
    from rlaif_operator.metrics import Metrics
    from rlaif_operator.settings import Settings

    idx = Indexes(jobs={}, children={}, pods={}, claims={})
    ctl = Controller(None, idx, Settings(trainer_metrics_port=0), Metrics())  # type: ignore[arg-type]
    assert ctl.progress is None
    ctl = Controller(None, idx, Settings(progress_scrape_seconds=0), Metrics())  # type: ignore[arg-type]
    assert ctl.progress is None
    ctl = Controller(None, idx, Settings(), Metrics())  # type: ignore[arg-type]
    assert ctl.progress is not None and ctl.progress.interval == 30.0


def test_a_pass_waits_for_the_job_s_write_to_be_due() -> None:
    now = T0 + timedelta(seconds=100)
    assert write_due_in(None, now) == 0.0
    body = {
        "status": {
            "stages": {
                "label": {"state": "Succeeded", "progress": {"lastUpdatedTime": fmt_time(T0)}},
                "reward": {"progress": {"lastUpdatedTime": fmt_time(T0 + timedelta(seconds=90))}},
            }
        }
    }
    assert write_due_in(body, now) == pytest.approx(20.0)  # the reward stage's last write, 10 s ago
    assert write_due_in(body, now + timedelta(seconds=60)) == 0.0
    # slots spread the jobs over the round, each in the same place every round
    scraper = ProgressScraper(None, 9400)  # type: ignore[arg-type]
    slots = [scraper.slot(("ns", f"job-{i}")) for i in range(200)]
    assert all(0 <= x < 30 for x in slots) and max(slots) - min(slots) > 25
    assert scraper.slot(("ns", "job-1")) == slots[1]
