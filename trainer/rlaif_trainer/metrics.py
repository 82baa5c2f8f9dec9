"""Prometheus metrics of one stage process, served on the stage pod's ``metrics`` port.

``rlaif-train <stage> --metrics-port PORT`` serves :class:`TrainerMetrics` and makes it the
process's recorder; the stages call :func:`record_step` where they already log a step (the RL
stage's ``metrics.jsonl`` line, a reward optimizer step, a labelled or judged batch). Without a
port, :func:`record_step` does nothing, so local runs and tests pay nothing for it.

No metric has a label: the chart's PodMonitor adds the pod's ``rlaif.dev/job`` and
``rlaif.dev/stage`` labels as target labels, so a series lives as long as its stage pod.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = ["GAUGES", "TrainerMetrics", "activate", "active", "record_progress", "record_step", "serve"]

PREFIX = "rlaif_trainer_"

#: The gauges (without the prefix) and their help texts. Each is the value of the latest step.
GAUGES = {
    "samples_per_second": "Samples per second of the latest step: pairs (label, reward), responses (rl), prompts judged (evaluate).",
    "tokens_per_second": "Tokens per second of the latest step: reward model input tokens (reward), generated response tokens (rl).",
    "loss": "Training loss of the latest step (reward, rl).",
    "reward": "Mean reward of the responses of the latest RL step.",
    "kl": "Mean KL divergence from the reference policy of the latest RL step.",
    "progress_ratio": "Share of the stage's work done, 0 to 1, counting work done before a restart.",
    "estimated_remaining_seconds": "Seconds until the stage's work is done, at this process's rate so far.",
    "pairs_labelled": "Pairs labelled so far (label), counting pairs labelled before a restart.",
}


class _LatestValues(Collector):
    """Gauges that appear only once set: a label stage must not report a reward of 0, which the
    dashboard would average into the job's reward."""

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()

    def set(self, name: str, value: float) -> None:
        if name not in GAUGES:
            raise KeyError(name)
        with self._lock:
            self._values[name] = float(value)

    def get(self, name: str) -> float | None:
        with self._lock:
            return self._values.get(name)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, text in GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, text)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            values = dict(self._values)
        for name, value in values.items():
            yield GaugeMetricFamily(PREFIX + name, GAUGES[name], value=value)


class TrainerMetrics:
    """The metric families of one stage process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = _LatestValues()
        self.registry.register(self.gauges)
        # Counters start at 0 when the process does, so rate() over a restarted pod stays right.
        self.steps = Counter(
            PREFIX + "steps",
            "Steps this process finished: optimizer steps (reward, rl), labelled batches (label), judged batches (evaluate).",
            registry=self.registry,
        )
        self.samples = Counter(
            PREFIX + "samples",
            "Samples this process finished: pairs (label, reward), responses (rl), prompts judged (evaluate).",
            registry=self.registry,
        )
        self._server: Any = None
        self._progress_start: tuple[float, float] | None = None  # (monotonic time, ratio) of the first report

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the bound port."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving; a recorder that is the process's recorder (see :func:`serve`) stops being it."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if _active is self:
            activate(None)

    def record_step(
        self,
        *,
        samples: int,
        seconds: float,
        tokens: float | None = None,
        loss: float | None = None,
        reward: float | None = None,
        kl: float | None = None,
        progress: float | None = None,
    ) -> None:
        self.steps.inc()
        self.samples.inc(samples)
        if seconds > 0:
            self.gauges.set("samples_per_second", samples / seconds)
            if tokens is not None:
                self.gauges.set("tokens_per_second", tokens / seconds)
        for name, value in (("loss", loss), ("reward", reward), ("kl", kl)):
            if value is not None:
                self.gauges.set(name, value)
        if progress is not None:
            self.record_progress(progress)

    def record_progress(self, ratio: float, *, pairs_labelled: int | None = None) -> None:
        ratio = min(max(float(ratio), 0.0), 1.0)
        self.gauges.set("progress_ratio", ratio)
        if pairs_labelled is not None:
            self.gauges.set("pairs_labelled", pairs_labelled)
        # The remaining time at this process's own rate: work found done at start (a resumed stage)
        # does not count as speed.
        now = time.monotonic()
        if self._progress_start is None:
            self._progress_start = (now, ratio)
            return
        t0, r0 = self._progress_start
        if ratio > r0 and now > t0:
            self.gauges.set("estimated_remaining_seconds", (1.0 - ratio) * (now - t0) / (ratio - r0))


_active: TrainerMetrics | None = None


def activate(recorder: TrainerMetrics | None) -> TrainerMetrics | None:
    """Make ``recorder`` the process's recorder (``None``: record nothing); returns the previous one."""
    global _active
    previous, _active = _active, recorder
    return previous


def active() -> TrainerMetrics | None:
    return _active


def serve(port: int, addr: str = "0.0.0.0") -> TrainerMetrics:
    """A new :class:`TrainerMetrics`, served on ``port`` and made the process's recorder."""
    recorder = TrainerMetrics()
    bound = recorder.serve(port, addr)
    activate(recorder)
    log.info("serving Prometheus metrics on %s:%d/metrics", addr, bound)
    return recorder


def record_step(
    *,
    samples: int,
    seconds: float,
    tokens: float | None = None,
    loss: float | None = None,
    reward: float | None = None,
    kl: float | None = None,
    progress: float | None = None,
) -> None:
    """One finished step of the running stage; a no-op unless a recorder is active."""
    if _active is not None:
        _active.record_step(
            samples=samples,
            seconds=seconds,
            tokens=tokens,
            loss=loss,
            reward=reward,
            kl=kl,
            progress=progress,
        )


def record_progress(ratio: float, *, pairs_labelled: int | None = None) -> None:
    """Progress without a step, e.g. the work a resumed stage finds already done."""
    if _active is not None:
        _active.record_progress(ratio, pairs_labelled=pairs_labelled)
