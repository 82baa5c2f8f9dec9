"""Live progress of running stages in ``status.stages.<stage>.progress`` (shaped after Kubeflow
Trainer's ``trainerStatus``: a percentage, the estimated remaining seconds, the latest metrics and
a last-update time).

The trainer already serves its progress as Prometheus metrics on the stage pod's ``metrics`` port
(``rlaif_trainer_progress_ratio``, ``..._estimated_remaining_seconds``, ``..._reward``, ...). The
operator reads that port at the pod's IP, so stage pods need no Kubernetes credentials (they run
without a service-account token) and no new code path: :class:`ProgressScraper` polls the running
stage pods every ``--progress-scrape-seconds``, and queues a pass for a job whose figures changed.

The write itself is the reconcile core's, decided by the pure :func:`next_progress`: the new
figures are taken only if they differ from the status and the status's ``lastUpdatedTime`` is at
least :data:`PROGRESS_WRITE_SECONDS` old. Because that time lives in the status, the bound holds
across operator restarts and replicas, and a pass for any other reason writes no progress early.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from rlaif_api.status import ProgressMetric, StageProgress

from .timing import fmt_time, parse_time

Key = tuple[str, str]  # (namespace, name) of an RLAIFJob


class Host(Protocol):
    """What the scraper needs of the controller: its watch caches, and its work queue."""

    indexes: Any

    def enqueue(self, key: Key, delay: float = 0.0) -> None: ...


log = logging.getLogger("rlaif_operator")

__all__ = [
    "PROGRESS_WRITE_SECONDS",
    "ProgressScraper",
    "Sample",
    "combine",
    "finished",
    "next_progress",
    "parse_metrics",
]

#: At most one progress write per job in this many seconds (issue 14: bound the status writes).
PROGRESS_WRITE_SECONDS = 30.0
SCRAPE_TIMEOUT_SECONDS = 2.0
SCRAPE_CONCURRENCY = 32
PREFIX = "rlaif_trainer_"
#: trainer gauge (without the prefix) -> the metric's name in the status, in the order shown
HEADLINE = {
    "reward": "reward",
    "kl": "kl",
    "loss": "loss",
    "pairs_labelled": "pairsLabelled",
    "samples_per_second": "samplesPerSecond",
}


@dataclass(frozen=True)
class Sample:
    """What one scrape (or the scrapes of a stage's pods together) said about a stage."""

    ratio: float | None = None
    remaining_seconds: float | None = None
    metrics: tuple[tuple[str, float], ...] = ()  # (status name, value), in HEADLINE order


def parse_metrics(text: str) -> Sample:
    """A :class:`Sample` from a trainer's ``/metrics`` text (the Prometheus exposition format)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(PREFIX) and family.type == "gauge" and family.samples:
            value = float(family.samples[0].value)
            if math.isfinite(value):
                values[family.name[len(PREFIX) :]] = value
    return Sample(
        ratio=values.get("progress_ratio"),
        remaining_seconds=values.get("estimated_remaining_seconds"),
        metrics=tuple((shown, values[name]) for name, shown in HEADLINE.items() if name in values),
    )


def combine(samples: Iterable[Sample]) -> Sample | None:
    """One stage's figures from its pods, in pod order: a sharded label stage has one pod per shard
    (mean progress, since the shards are equal by construction; the slowest shard's remaining time;
    the pairs of all shards), a multi-process stage reports from its first pod."""
    got = list(samples)
    if not got:
        return None
    if len(got) == 1:
        return got[0]
    ratios = [s.ratio for s in got if s.ratio is not None]
    remaining = [s.remaining_seconds for s in got if s.remaining_seconds is not None]
    merged: dict[str, float] = {}
    for sample in got:
        for name, value in sample.metrics:
            if name == "pairsLabelled" or name == "samplesPerSecond":
                merged[name] = merged.get(name, 0.0) + value
            else:
                merged.setdefault(name, value)
    order = list(HEADLINE.values())
    return Sample(
        ratio=sum(ratios) / len(got) if ratios else None,  # a pod with no progress yet counts as 0
        remaining_seconds=max(remaining) if remaining else None,
        metrics=tuple(sorted(merged.items(), key=lambda kv: order.index(kv[0]))),
    )


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def progress_of(sample: Sample, now_s: str) -> StageProgress:
    return StageProgress(
        progress_percentage=None
        if sample.ratio is None
        else min(max(math.floor(sample.ratio * 100), 0), 100),
        estimated_remaining_seconds=None
        if sample.remaining_seconds is None
        else max(round(sample.remaining_seconds), 0),
        metrics=[ProgressMetric(name=name, value=_shown(value)) for name, value in sample.metrics],
        last_updated_time=now_s,
    )


def _same(a: StageProgress, b: StageProgress) -> bool:
    return a.model_dump(exclude={"last_updated_time"}) == b.model_dump(exclude={"last_updated_time"})


def next_progress(old: StageProgress | None, sample: Sample | None, now: datetime) -> StageProgress | None:
    """The progress a pass writes (pure): ``old`` unless the scraped figures differ from it and
    ``old`` is at least :data:`PROGRESS_WRITE_SECONDS` old, so a job's progress costs at most one
    status write per 30 s, and none while nothing changes."""
    if sample is None:
        return old
    new = progress_of(sample, fmt_time(now))
    if old is None:
        return new
    if _same(old, new):
        return old
    last = parse_time(old.last_updated_time)
    if last is not None and (now - last).total_seconds() < PROGRESS_WRITE_SECONDS:
        return old
    return new


def finished(old: StageProgress | None, now_s: str) -> StageProgress | None:
    """The progress of a stage that just succeeded: 100%, nothing remaining, its last metrics (in
    the same write as the success, so it costs nothing)."""
    if old is None:
        return None
    return old.model_copy(
        update={"progress_percentage": 100, "estimated_remaining_seconds": 0, "last_updated_time": now_s}
    )


def write_due_in(body: dict[str, Any] | None, now: datetime) -> float:
    """Seconds until the job's next progress write may happen: :data:`PROGRESS_WRITE_SECONDS` after
    the latest ``lastUpdatedTime`` of its stages' progress (0 when it has none)."""
    stages = ((body or {}).get("status") or {}).get("stages") or {}
    times = [
        parse_time(((st or {}).get("progress") or {}).get("lastUpdatedTime"))
        for st in stages.values()
        if isinstance(st, dict)
    ]
    latest = max((t for t in times if t is not None), default=None)
    if latest is None:
        return 0.0
    return max(PROGRESS_WRITE_SECONDS - (now - latest).total_seconds(), 0.0)


class ProgressScraper:
    """Polls the running stage pods' metrics ports and keeps the latest :class:`Sample` per job and
    stage; a job whose figures changed gets a pass (which :func:`next_progress` may still skip)."""

    def __init__(
        self,
        controller: Host,
        port: int,
        interval: float = PROGRESS_WRITE_SECONDS,
        timeout: float = SCRAPE_TIMEOUT_SECONDS,
        concurrency: int = SCRAPE_CONCURRENCY,
    ) -> None:
        self.controller = controller
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.concurrency = concurrency
        self.latest: dict[Key, dict[str, Sample]] = {}
        self.scrapes = 0
        self.failures = 0
        self._session: Any = None

    def samples(self, key: Key) -> dict[str, Sample]:
        return self.latest.get(key, {})

    def targets(self) -> dict[Key, dict[str, list[str]]]:
        """``{job key: {stage: [pod IP, ...]}}`` of the running stage pods, from the watch caches."""
        out: dict[Key, dict[str, list[str]]] = {}
        indexes = self.controller.indexes
        jobsets = getattr(indexes, "jobsets", {})
        for key in indexes.keys():  # noqa: SIM118 (not a dict)
            namespace = key[0]
            # a Job's pods are its shards (all read); a multi-node JobSet reports from rank 0 alone,
            # whose figures are already the whole stage's
            children = [(j, False) for j in indexes.children.get(key, ())]
            children += [(j, True) for j in jobsets.get(key, ())]
            for job, rank_zero in children:
                pods = sorted(
                    (p for p in indexes.pods.get((namespace, job.name), ()) if p.phase == "Running" and p.ip),
                    key=lambda p: (getattr(p, "rank", None) or 0, p.name),
                )
                if rank_zero:
                    pods = pods[:1]
                if pods and not job.deleting:
                    out.setdefault(key, {}).setdefault(job.stage, []).extend(str(p.ip) for p in pods)
        return out

    async def _fetch(self, ip: str, limit: asyncio.Semaphore) -> Sample | None:
        import aiohttp

        host = f"[{ip}]" if ":" in ip else ip
        async with limit:
            self.scrapes += 1
            try:
                async with self._session.get(
                    f"http://{host}:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=self.timeout)
                ) as resp:
                    if resp.status != 200:
                        raise OSError(f"HTTP {resp.status}")
                    return parse_metrics(await resp.text())
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError) as err:
                # a pod still loading its model, or one that just ended: the next round tries again
                self.failures += 1
                log.debug("progress scrape of %s:%d failed: %s", ip, self.port, err)
                return None

    async def scrape_once(self) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        targets = self.targets()
        limit = asyncio.Semaphore(self.concurrency)
        flat = [
            (key, stage, ip) for key, stages in targets.items() for stage, ips in stages.items() for ip in ips
        ]
        results = await asyncio.gather(*(self._fetch(ip, limit) for _, _, ip in flat))
        grouped: dict[Key, dict[str, list[Sample]]] = {}
        for (key, stage, _), sample in zip(flat, results, strict=True):
            bucket = grouped.setdefault(key, {}).setdefault(stage, [])
            if sample is not None:
                bucket.append(sample)
        latest: dict[Key, dict[str, Sample]] = {}
        for key, stages in grouped.items():
            for stage, samples in stages.items():
                combined = combine(samples)
                if combined is not None:
                    latest.setdefault(key, {})[stage] = combined
        changed = [key for key, stages in latest.items() if self.latest.get(key) != stages]
        self.latest = latest
        now = datetime.now(timezone.utc)
        for key in changed:
            # Not all at once: every running job's figures change each round, and N passes queued
            # together would delay the stage transitions queued behind them (at N = 500 the p99 of
            # apply -> first Job went from 9 s to 35 s). Each job gets its own slot in the round,
            # and no pass before its 30 s are up, when next_progress would skip the write anyway.
            self.controller.enqueue(
                key, max(self.slot(key), write_due_in(self.controller.indexes.body(key), now))
            )

    def slot(self, key: Key) -> float:
        """The job's fixed offset in a scrape round, from a hash of its key (0 to the interval)."""
        digest = hashlib.sha256("/".join(key).encode()).digest()
        return self.interval * int.from_bytes(digest[:4], "big") / 2**32

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.scrape_once()
                except Exception as err:  # never let a scrape round take the operator down
                    log.warning("progress scrape round failed: %s", err)
        finally:
            if self._session is not None:
                with contextlib.suppress(Exception):
                    await self._session.close()
