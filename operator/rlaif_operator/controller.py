"""The I/O half of the operator: a keyed work queue that runs the pure core and executes its plan.

Why a work queue and not reconciliation inside kopf's handlers: the RLAIFJob must be reconciled
when any of its children (Jobs, Pods, the workspace claim) changes, and kopf handlers only see
the object whose event fired. So every kopf handler just *enqueues the owning RLAIFJob's key*;
workers dedupe keys (a key is never reconciled twice at once, and events that arrive mid-reconcile
cause exactly one more pass), read the RLAIFJob and its children from kopf's in-memory indexes
(no list calls), and execute the plan. Failed passes are retried with bounded exponential backoff
(``MAX_RETRIES``); a periodic resync re-enqueues every RLAIFJob as a safety net, which is also how
the operator recovers after the API server comes back.

Two short-lived caches cover the lag between a write and its watch event: the RLAIFJob returned by
our last status patch (used when it is newer than the index's copy), and the stage Jobs this
process just created or deleted (treated as present or gone until the watch catches up). Both are
only accelerators: after a restart, kopf fills the indexes before any handler runs, and the core
derives everything from the RLAIFJob and its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import rlaif_api as api

from .builders import ANNOTATION_JOB_NAME, JOBSET_API_VERSION, JOBSET_KIND, stage_job_name
from .kube import PLURALS, RETRYABLE, ApiError, KubeClient, collection_path, object_collection
from .metrics import Metrics
from .observe import JobInfo, Observed, PodInfo, ServerInfo, ServerPodState, summarize_jobset
from .plan import EventSpec, Plan
from .progress import ProgressScraper
from .reconcile import reconcile
from .settings import Settings
from .timing import backoff_delay, fmt_time

log = logging.getLogger("rlaif_operator")

Key = tuple[str, str]  # (namespace, name)
MAX_RETRIES = 8
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 30.0
WRITE_LAG_SECONDS = 60.0
RESYNC_SECONDS = 60.0
# A stage Job the API server refuses (a quota, an admission webhook, an invalid pass-through
# podTemplate field) is created again after 5, 10, 20 ... seconds, capped at the operator's wait
# requeue; at once when the spec changes. The same status codes as client-go's "not retryable".
REFUSED_STATUSES = frozenset({400, 403, 422})
REFUSAL_RETRY_BASE_SECONDS = 5.0
# 422 Invalid: the Job itself is wrong (a pass-through field the schema let through), so the same
# spec is refused again every time; the job fails with StageJobInvalid instead of retrying. 403
# (a quota, a webhook's or RBAC's denial) and 400 may pass once something else changes.
INVALID_STATUS = 422


@dataclass
class Refusal:
    """The API server's last answer to creating one stage Job."""

    message: str
    generation: int | None  # of the RLAIFJob then: a new spec is retried at once
    count: int  # refusals in a row, for the backoff
    until: float  # monotonic time before which the core sees the Job as refused
    invalid: bool = False  # HTTP 422: refused for what the Job is, not for the cluster's state


def _rv(body: Mapping[str, Any] | None) -> int:
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def retry_delay(failures: int) -> float:
    return backoff_delay(max(failures, 1), RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)


class Indexes:
    """Read access to kopf's indexes (plain mappings of key -> iterable of values)."""

    def __init__(
        self,
        jobs: Mapping[Key, Iterable[dict[str, Any]]],
        children: Mapping[Key, Iterable[JobInfo]],
        pods: Mapping[Key, Iterable[PodInfo]],
        claims: Mapping[str, Iterable[str]],
        claims_known: Callable[[], bool] = lambda: True,
        jobsets: Mapping[Key, Iterable[JobInfo]] | None = None,
        servers: Mapping[Key, Iterable[ServerInfo]] | None = None,
        server_pods: Mapping[Key, Iterable[ServerPodState]] | None = None,
    ) -> None:
        self.jobs = jobs
        self.children = children
        self.jobsets: Mapping[Key, Iterable[JobInfo]] = jobsets if jobsets is not None else {}
        # labeler.server: Deployments by owning RLAIFJob, their pods' states by Deployment
        self.servers: Mapping[Key, Iterable[ServerInfo]] = servers if servers is not None else {}
        self.server_pods: Mapping[Key, Iterable[ServerPodState]] = (
            server_pods if server_pods is not None else {}
        )
        self.pods = pods
        self.claims = claims
        self.claims_known = claims_known

    def body(self, key: Key) -> dict[str, Any] | None:
        values = list(self.jobs.get(key, ()))
        return values[-1] if values else None

    def keys(self) -> list[Key]:
        return list(self.jobs)


class Controller:
    def __init__(
        self,
        client: KubeClient,
        indexes: Indexes,
        settings: Settings,
        metrics: Metrics,
        workers: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        relogin: Callable[[], KubeClient] | None = None,
    ) -> None:
        self.client = client
        self.relogin = relogin  # builds a client with fresh credentials (rotated token) after a 401
        self.indexes = indexes
        self.settings = settings
        self.metrics = metrics
        self.workers = workers
        self.clock = clock
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.queued: set[Key] = set()
        self.processing: set[Key] = set()
        self.dirty: set[Key] = set()
        self.failures: dict[Key, int] = {}
        self.timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self.latest: dict[Key, dict[str, Any]] = {}
        # Per RLAIFJob, so that a pass looks only at its own entries: a scan of every recent
        # write per pass made the operator's CPU grow with the square of the burst size.
        self.created: dict[Key, dict[str, tuple[float, JobInfo]]] = {}  # job name -> (when, info)
        self.deleted: dict[tuple[str, str], float] = {}  # (namespace, job name) -> when
        self.ensured: dict[Key, set[tuple[str, str, str, str]]] = {}
        # Per RLAIFJob, uid -> last summary of a stage Job or Pod. Kept per owner so that an entry
        # whose DELETED event was lost across a watch relist goes when its RLAIFJob is forgotten.
        self.summaries: dict[Key, dict[str, object]] = {}
        self.refusals: dict[Key, dict[str, Refusal]] = {}  # stage Job name -> last refusal
        # Whether the cluster served the JobSet API when the operator started (probe_jobset_api):
        # kopf only watches the resources it found then (its CRD scanning is off with exact
        # namespaces), so a JobSet created later could not be followed; None: not probed.
        self.jobset_api: bool | None = None
        # Until when (monotonic) the JobSet API counts as missing since a JobSet create was answered
        # 404 (JobSet removed while the operator runs); the create is tried again after that.
        self.jobset_missing_until = 0.0
        self.tasks: list[asyncio.Task[None]] = []
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.progress: ProgressScraper | None = (
            ProgressScraper(self, settings.trainer_metrics_port, settings.progress_scrape_seconds)
            if settings.trainer_metrics_port and settings.progress_scrape_seconds > 0
            else None
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.workers):
            self.tasks.append(asyncio.create_task(self._worker(), name=f"rlaif-worker-{i}"))
        self.tasks.append(asyncio.create_task(self._resync(), name="rlaif-resync"))
        self.tasks.append(asyncio.create_task(self._lag_probe(), name="rlaif-lag-probe"))
        if self.progress is not None:
            self.tasks.append(asyncio.create_task(self.progress.run(), name="rlaif-progress"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, handle in self.timers.values():
            handle.cancel()
        await self.client.close()

    async def probe_jobset_api(self) -> bool | None:
        """Ask discovery whether ``jobset.x-k8s.io/v1alpha2`` is served (every authenticated client
        may); None when the API server could not say (then a create's 404 still tells)."""
        try:
            await self.client.get(f"/apis/{JOBSET_API_VERSION}")
            self.jobset_api = True
        except ApiError as err:
            self.jobset_api = False if err.status == 404 else None
        except RETRYABLE:
            self.jobset_api = None
        if self.jobset_api is False:
            log.info(
                "the cluster does not serve %s: stages with resources.<stage>.nodes > 1 wait "
                "(JobSetNotInstalled) until JobSet is installed and the operator restarted",
                JOBSET_API_VERSION,
            )
        return self.jobset_api

    # -- the queue -----------------------------------------------------------------------------
    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            self._schedule(key, delay)
            return
        if key in self.processing:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def _schedule(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        current = self.timers.get(key)
        if current is not None and current[0] <= when:
            return
        if current is not None:
            current[1].cancel()

        def fire() -> None:
            self.timers.pop(key, None)
            self.enqueue(key)

        self.timers[key] = (when, loop.call_at(when, fire))

    def forget(self, key: Key, uid: str | None) -> None:
        self.latest.pop(key, None)
        self.failures.pop(key, None)
        self.created.pop(key, None)
        self.ensured.pop(key, None)
        self.summaries.pop(key, None)
        self.refusals.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        if uid:
            self.metrics.forget(uid)

    def child_event(self, owner: Key | None, uid: str, summary: object | None, deleted: bool = False) -> bool:
        """A stage Job's or Pod's watch event: queue its owner if the event changed what the core
        sees of the child; returns whether it did.

        Most events of a child (a scheduled pod, the Job controller's bookkeeping) leave its summary
        as it was; a pass for them would plan nothing, so they are not queued.
        """
        if owner is None:
            return False
        if deleted:
            seen = self.summaries.get(owner, {})
            seen.pop(uid, None)
            if not seen:  # children are deleted after their RLAIFJob: leave no empty entry behind
                self.summaries.pop(owner, None)
        elif uid and summary is not None:
            seen = self.summaries.setdefault(owner, {})
            if seen.get(uid) == summary:
                return False
            seen[uid] = summary
        self.enqueue(owner)
        return True

    def is_own_echo(self, key: Key, body: Mapping[str, Any]) -> bool:
        """The watch event of our own status write: the pass that wrote it already planned from it."""
        cached = self.latest.get(key)
        return cached is not None and _rv(cached) == _rv(body) and _rv(body) > 0

    def depth(self) -> int:
        return self.queue.qsize() + len(self.processing)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            self.processing.add(key)
            try:
                await self.reconcile_key(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.metrics.reconcile_total.labels(result="error").inc()
                if isinstance(err, ApiError) and err.status == 401 and self.relogin is not None:
                    stale, self.client = self.client, self.relogin()
                    await stale.close()
                n = self.failures.get(key, 0) + 1
                self.failures[key] = n
                if n <= MAX_RETRIES:
                    delay = retry_delay(n)
                    log.warning(
                        "reconcile %s/%s failed (try %d/%d, again in %.1fs): %s",
                        *key,
                        n,
                        MAX_RETRIES,
                        delay,
                        err,
                    )
                    self._schedule(key, delay)
                else:
                    log.error(
                        "reconcile %s/%s failed %d times, waiting for the next event or resync: %s",
                        *key,
                        n,
                        err,
                    )
                    self.failures.pop(key, None)
            finally:
                self.processing.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.5)
            self.metrics.loop_lag.observe(max(loop.time() - before - 0.5, 0.0))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            self.expire_writes()
            for key in self.indexes.keys():  # noqa: SIM118 (not a dict)
                self.enqueue(key)

    def expire_writes(self) -> None:
        """Forget writes older than the longest watch lag we allow for."""
        horizon = time.monotonic() - WRITE_LAG_SECONDS
        for key, jobs in list(self.created.items()):
            for job_name, (when, _) in list(jobs.items()):
                if when < horizon:
                    del jobs[job_name]
            if not jobs:
                del self.created[key]
        for k, when in list(self.deleted.items()):
            if when < horizon:
                del self.deleted[k]

    # -- one reconciliation --------------------------------------------------------------------
    def _body(self, key: Key) -> dict[str, Any] | None:
        body = self.indexes.body(key)
        if body is None:
            return None
        cached = self.latest.get(key)
        if cached is not None:
            same = (cached.get("metadata") or {}).get("uid") == (body.get("metadata") or {}).get("uid")
            if same and _rv(cached) > _rv(body):
                return cached
            self.latest.pop(key, None)
        return body

    def observe(self, namespace: str, name: str, uid: str, generation: int | None = None) -> Observed:
        now = time.monotonic()
        jobs: dict[str, JobInfo] = {}
        for info in (
            *self.indexes.children.get((namespace, name), ()),
            *self.indexes.jobsets.get((namespace, name), ()),
        ):
            recently_deleted = self.deleted.get((namespace, info.name))
            if recently_deleted is not None and now - recently_deleted < WRITE_LAG_SECONDS:
                continue
            jobs[info.name] = info
        for job_name, (when, info) in self.created.get((namespace, name), {}).items():
            if now - when <= WRITE_LAG_SECONDS and info.owner_uid == uid and job_name not in jobs:
                jobs[job_name] = info  # created by us, the watch has not shown it yet
        pods = {j: list(self.indexes.pods.get((namespace, j), ())) for j in jobs}
        claims = frozenset(self.indexes.claims.get(namespace, ())) if self.indexes.claims_known() else None
        refusals = self.refusals.get((namespace, name), {})
        refused = {
            job_name: (r.message, r.until - now)
            for job_name, r in refusals.items()
            if r.generation == generation and now < r.until and not r.invalid
        }
        invalid = {j: r.message for j, r in refusals.items() if r.generation == generation and r.invalid}
        return Observed(
            jobs=list(jobs.values()),
            pods=pods,
            claims=claims,
            refused=refused,
            invalid=invalid,
            jobset_api=False
            if self.jobset_api is False or now < self.jobset_missing_until
            else self.jobset_api,
            progress=self.progress.samples((namespace, name)) if self.progress is not None else {},
            server=self._server(namespace, name, uid),
        )

    def _server(self, namespace: str, name: str, uid: str) -> ServerInfo | None:
        """The job's labeler server, with the state of a pod that is not ready (the one to show)."""
        server = next(
            (s for s in self.indexes.servers.get((namespace, name), ()) if s.owner_uid == uid), None
        )
        if server is None:
            return None
        pods = list(self.indexes.server_pods.get((namespace, server.name), ()))
        waiting = [p.state for p in pods if not p.ready]
        shown = waiting[-1] if waiting else (pods[-1].state if pods else None)
        return dataclasses.replace(server, pod_state=shown)

    async def reconcile_key(self, key: Key) -> Plan | None:
        started = time.perf_counter()
        body = self._body(key)
        if body is None:
            return None
        meta = body.get("metadata") or {}
        namespace, name, uid = key[0], key[1], meta.get("uid", "")
        result = "success"
        try:
            # Planned again when the API server refused a stage Job, so that the status and
            # events say so rather than describe a Job that does not exist.
            for _ in range(3):
                now = self.clock()
                plan = reconcile(
                    body, self.observe(namespace, name, uid, meta.get("generation")), now, self.settings
                )
                if await self.execute(key, body, plan, now):
                    break
        except ApiError as err:
            if err.status == 409:
                result = "conflict"
            raise
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            if result == "conflict":
                self.metrics.reconcile_total.labels(result="conflict").inc()
        self.metrics.reconcile_total.labels(result="success").inc()
        return plan

    async def execute(self, key: Key, body: dict[str, Any], plan: Plan, now: datetime) -> bool:
        """Carry out ``plan``; False when the API server refused a stage Job and nothing was
        recorded, so the caller plans the pass again with the refusal observed."""
        namespace, name = key
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        # Independent writes go out concurrently, so a pass costs two round trips: first the
        # children and the events, then the status write that records the transition. Events
        # precede that write, so a crash in between re-derives and re-posts them (at least once)
        # rather than losing them. A pass that creates a stage Job posts its events only once the
        # Job exists, since "StageStarted" for a Job the API server refused would be false: a third
        # round trip on those passes. Posting them beside the status write instead would lose the
        # events of an operator killed in between, which the fault tests catch. The ConfigMap is
        # created alongside the first Job: the kubelet waits for a pod's ConfigMap volume, and the
        # pod cannot start sooner anyway.
        events_after_creates = bool(plan.create)
        generation = meta.get("generation")
        first = await asyncio.gather(
            *(self._ensure(key, obj, uid) for obj in plan.ensure),
            *(self._delete_job(key, job_name) for job_name in plan.delete),
            *(self._delete_object(key, *obj) for obj in plan.delete_objects),
            *(() if events_after_creates else (self._post_event(body, event, now) for event in plan.events)),
            *(self._create_job(key, manifest, uid, now, generation) for manifest in plan.create),
            return_exceptions=True,
        )
        errors = [r for r in first if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        created = first[len(first) - len(plan.create) :]
        if "refused" in created:
            return False
        requeue_soon = "exists" in created
        if events_after_creates:
            await asyncio.gather(*(self._post_event(body, event, now) for event in plan.events))
        if plan.status is not None:
            patch = {"status": merge_patch(body.get("status") or {}, plan.status)}
            path = collection_path(api.API_VERSION, api.PLURAL, namespace) + f"/{name}/status"
            try:
                updated = await self.client.merge_patch(path, patch)
            except ApiError as err:
                if err.status == 404:
                    return True  # deleted meanwhile
                raise
            if isinstance(updated, dict):
                self.latest[key] = updated
        self.metrics.set_phase(uid, plan.phase)
        for outcome in plan.outcomes:
            self.metrics.stage_finished(outcome.stage, outcome.result, outcome.duration_seconds)
        for stage, seconds in plan.queue_waits:
            self.metrics.queue_waited(stage, seconds)
        if plan.delete_self:
            await self._delete_self(namespace, name, uid)
            return True
        if plan.requeue_after is not None:
            self._schedule(key, plan.requeue_after + 0.05)
        if requeue_soon:
            self._schedule(key, 1.0)
        return True

    # -- children ------------------------------------------------------------------------------
    async def _ensure(self, key: Key, obj: dict[str, Any], uid: str) -> None:
        meta = obj["metadata"]
        digest = (meta.get("annotations") or {}).get("rlaif.dev/config-hash", "")
        cache_key = (obj["kind"], meta["namespace"], meta["name"], f"{uid}/{digest}")
        ensured = self.ensured.setdefault(key, set())
        if cache_key in ensured:
            return
        try:
            await self.client.create(object_collection(obj), obj)
        except ApiError as err:
            if err.status != 409:
                raise
            if obj["kind"] == "ConfigMap":
                path = object_collection(obj) + f"/{meta['name']}"
                current = await self.client.get(path)
                current_hash = ((current.get("metadata") or {}).get("annotations") or {}).get(
                    "rlaif.dev/config-hash"
                )
                if current_hash != digest:
                    await self.client.merge_patch(
                        path,
                        {"metadata": {"annotations": {"rlaif.dev/config-hash": digest}}, "data": obj["data"]},
                    )
        ensured.add(cache_key)

    async def _create_job(
        self, key: Key, manifest: dict[str, Any], uid: str, now: datetime, generation: int | None
    ) -> str:
        """Create one stage Job: "created", "exists" (someone did already) or "refused"."""
        meta = manifest["metadata"]
        labels = meta["labels"]
        info = JobInfo(
            name=meta["name"],
            stage=labels["rlaif.dev/stage"],
            attempt=int(labels["rlaif.dev/attempt"]),
            owner_uid=uid,
            created=fmt_time(now),
            suspended=bool(manifest["spec"].get("suspend")),
            completions=int(manifest["spec"].get("completions") or 1),
        )
        if manifest["kind"] == JOBSET_KIND:
            info = dataclasses.replace(
                summarize_jobset(manifest) or info, owner_uid=uid, created=fmt_time(now)
            )
        try:
            await self.client.create(object_collection(manifest), manifest)
        except ApiError as err:
            if err.status == 404 and manifest["kind"] == JOBSET_KIND:
                # No JobSet API in this cluster: the pass is planned again and waits with
                # JobSetNotInstalled; a create is tried again after the wait requeue.
                self.jobset_missing_until = time.monotonic() + self.settings.wait_requeue_seconds
                log.warning(
                    "cannot create JobSet %s/%s: the cluster does not serve %s (is JobSet installed?)",
                    meta["namespace"],
                    meta["name"],
                    JOBSET_API_VERSION,
                )
                return "refused"
            if err.status in REFUSED_STATUSES:
                self._refused(key, meta["name"], err, generation)
                return "refused"
            if err.status != 409:
                raise
            # Already there: a previous operator instance (or our own lagging cache) created it.
            # The index will show it; if it belongs to an older RLAIFJob of the same name, the
            # garbage collector removes it and a later pass creates ours.
            log.info("stage Job %s/%s already exists: adopting it", meta["namespace"], meta["name"])
            return "exists"
        self.refusals.get(key, {}).pop(meta["name"], None)
        self.created.setdefault(key, {})[meta["name"]] = (time.monotonic(), info)
        return "created"

    def _refused(self, key: Key, job_name: str, err: ApiError, generation: int | None) -> None:
        refusals = self.refusals.setdefault(key, {})
        last = refusals.get(job_name)
        count = last.count + 1 if last is not None and last.generation == generation else 1
        delay = backoff_delay(count, REFUSAL_RETRY_BASE_SECONDS, self.settings.wait_requeue_seconds)
        body = err.body if isinstance(err.body, dict) else {}
        message = str(body.get("message") or err)
        invalid = err.status == INVALID_STATUS
        refusals[job_name] = Refusal(message, generation, count, time.monotonic() + delay, invalid)
        log.warning(
            "the API server refused stage Job %s/%s (HTTP %d, again in %.0fs): %s",
            key[0],
            job_name,
            err.status,
            delay,
            message,
        )

    async def _delete_job(self, key: Key, job_name: str) -> None:
        namespace = key[0]
        path = collection_path("batch/v1", "jobs", namespace) + f"/{job_name}"
        if self._is_jobset(key, job_name):
            path = collection_path(JOBSET_API_VERSION, "jobsets", namespace) + f"/{job_name}"
        try:
            await self.client.delete(path, {"propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise
        self.deleted[(namespace, job_name)] = time.monotonic()
        self.created.get(key, {}).pop(job_name, None)

    async def _delete_object(self, key: Key, api_version: str, plural: str, name: str) -> None:
        """Delete another owned object (the labeler server's Deployment or Service), and forget
        that it was ensured, so that a later stage that needs it creates it again."""
        try:
            await self.client.delete(
                collection_path(api_version, plural, key[0]) + f"/{name}", {"propagationPolicy": "Background"}
            )
        except ApiError as err:
            if err.status != 404:
                raise
        kind = next((k for k, p in PLURALS.items() if p == plural), plural)
        ensured = self.ensured.get(key, set())
        for entry in [e for e in ensured if e[0] == kind and e[2] == name]:
            ensured.discard(entry)

    def _is_jobset(self, key: Key, job_name: str) -> bool:
        """Whether the stage child ``job_name`` of ``key`` is a JobSet (a multi-node stage's)."""
        if any(info.name == job_name for info in self.indexes.jobsets.get(key, ())):
            return True
        created = self.created.get(key, {}).get(job_name)
        return created is not None and created[1].kind == JOBSET_KIND

    async def _delete_self(self, namespace: str, name: str, uid: str) -> None:
        path = collection_path(api.API_VERSION, api.PLURAL, namespace) + f"/{name}"
        try:
            await self.client.delete(path, {"preconditions": {"uid": uid}, "propagationPolicy": "Background"})
        except ApiError as err:
            if err.status not in (404, 409):
                raise
        log.info("deleted finished RLAIFJob %s/%s (ttlSecondsAfterFinished)", namespace, name)

    async def _post_event(self, body: dict[str, Any], event: EventSpec, now: datetime) -> None:
        meta = body.get("metadata") or {}
        stamp = fmt_time(now)
        name = f"{meta.get('name', 'rlaifjob')[:200]}."
        manifest = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": (
                {"name": name + event.key, "namespace": meta.get("namespace")}
                if event.key
                else {"generateName": name, "namespace": meta.get("namespace")}
            ),
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": event.reason[:128],
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": "rlaif-operator"},
            "reportingComponent": "rlaif.dev/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.client.create(object_collection(manifest), manifest)
        except (ApiError, *RETRYABLE) as err:  # events are best effort: never fail a reconcile
            if isinstance(err, ApiError) and err.status == 409:
                return  # AlreadyExists: an earlier try of this pass posted it (named by event.key)
            log.warning(
                "could not post event %s on %s/%s: %s",
                event.reason,
                meta.get("namespace"),
                meta.get("name"),
                err,
            )


def job_owner_key(body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("controller"):
            return (meta.get("namespace", ""), ref.get("name", ""))
    return None


def pod_owner_key(body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(ANNOTATION_JOB_NAME)
    return (meta.get("namespace", ""), owner) if owner else None


__all__ = ["Controller", "Indexes", "job_owner_key", "pod_owner_key", "retry_delay", "stage_job_name"]


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: changed keys, ``None`` for
    removed ones, lists replaced whole. Sending only the difference keeps status writes small and
    leaves fields written by anyone else untouched."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = (
                merge_patch(old[key], value)
                if isinstance(value, dict) and isinstance(old[key], dict)
                else value
            )
    return patch
