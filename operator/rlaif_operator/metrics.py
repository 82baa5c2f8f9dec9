"""Prometheus metrics of the operator, served by prometheus-client on ``/metrics``.

No label carries a per-job value (job names, namespaces, uids): label sets stay bounded however
many RLAIFJobs run. ``rlaif_jobs{phase}`` is computed at scrape time from the operator's own view
of every RLAIFJob, so it is never stale after a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rlaif_api import PHASE_OF_STAGE

PHASES = ("Pending", "Queued", *PHASE_OF_STAGE.values(), "Succeeded", "Failed", "Suspended")
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# From "admitted at once" to "a day in a saturated queue".
QUEUE_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _JobsByPhase(Collector):
    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._source():
            counts[phase] = counts.get(phase, 0) + 1
        family = GaugeMetricFamily(
            "rlaif_jobs", "RLAIFJobs known to the operator, by phase.", labels=["phase"]
        )
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class Metrics:
    """All operator metrics, in their own registry (so tests can make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        self.stage_duration = Histogram(
            "rlaif_stage_duration_seconds",
            "Wall time of one stage attempt, from its Job's creation to its pod's end.",
            ["stage", "result"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "rlaif_stage_queue_wait_seconds",
            "Time a stage Job waited in its Kueue queue until admission (each admission: the first, and each "
            "readmission after a preemption).",
            ["stage"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.stage_attempts = Counter(
            "rlaif_stage_attempts_total",
            "Finished stage attempts, by stage and result (succeeded or failed).",
            ["stage", "result"],
            registry=self.registry,
        )
        self.reconcile_total = Counter(
            "rlaif_reconcile_total",
            "Reconciliations of an RLAIFJob, by result (success, error, conflict).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "rlaif_reconcile_duration_seconds",
            "Time to reconcile one RLAIFJob: plan plus the API calls it needs.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.api_requests = Counter(
            "rlaif_api_requests_total",
            "API requests the operator's reconciler made (kopf's watches not included), by method and HTTP code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.api_request_duration = Histogram(
            "rlaif_api_request_duration_seconds",
            "Latency of the reconciler's API requests, by method.",
            ["method"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "rlaif_event_loop_lag_seconds",
            "How late the operator's event loop wakes up from a 0.5 s sleep (CPU starvation or blocking code).",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_JobsByPhase(self._phase_values))

    # -- job phases ----------------------------------------------------------------------------
    def _phase_values(self) -> list[str]:
        with self._lock:
            return list(self._phases.values())

    def set_phase(self, uid: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = phase

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    # -- stage outcomes ------------------------------------------------------------------------
    def stage_finished(self, stage: str, result: str, duration_seconds: float | None) -> None:
        self.stage_attempts.labels(stage=stage, result=result).inc()
        if duration_seconds is not None:
            self.stage_duration.labels(stage=stage, result=result).observe(duration_seconds)

    def queue_waited(self, stage: str, seconds: float) -> None:
        self.queue_wait.labels(stage=stage).observe(seconds)

    def api_request(self, method: str, status: int, seconds: float) -> None:
        self.api_requests.labels(method=method, code=str(status)).inc()
        self.api_request_duration.labels(method=method).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        return start_http_server(port, addr=addr, registry=self.registry)
