"""Leader election on a coordination.k8s.io/v1 Lease: only one of several operator replicas acts.

Why a Lease and not kopf's peering (see "High availability" in docs/operator-guide.md):

* kopf peering freezes *every* operator of equal priority, so the replicas of one Deployment would
  need distinct priorities, which a pod template cannot give them (random ones can collide and
  freeze the cluster unserved; a restarted pod that draws a higher one preempts a healthy leader).
* It is advisory: a replica learns of a peer from its watch, so a new higher-priority replica acts
  before the old one has paused, and a killed peer counts as gone only after its lifetime (60 s).
* Pausing kopf pauses its watchers, not this operator's own controller (workers and resync run on
  their own tasks), so a paused replica could still act on what it had seen.
* It needs kopf's peering CRDs (a cluster-scoped install) and RBAC on them (cluster-wide with
  ``--all-namespaces``). A Lease is a built-in API; the rules are get/create/update on leases in
  the operator's own namespace only.

The protocol is client-go's leaderelection: a candidate takes the Lease when it is absent, released
(no holder) or not renewed for ``leaseDurationSeconds`` *as measured on the candidate's own
monotonic clock since it last saw the record change* (so clock skew between nodes does not matter);
every write carries the ``resourceVersion`` it read, so of two candidates only one wins (HTTP 409
for the other). The leader renews every ``retry_period`` and, if it has not renewed for
``renew_deadline`` (< lease duration), exits at once: it can no longer prove it is alone, and a
standby may take over as soon as the lease duration has passed. On a clean shutdown the leader
releases the Lease after kopf has stopped, so a standby takes over within one retry period.

:func:`decide` is the pure decision; :class:`LeaderElector` does the API calls around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("rlaif_operator.leader")

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    TAKE = "take"  # released or expired: update it to hold it (a new transition)
    RENEW = "renew"  # we hold it: update renewTime
    WAIT = "wait"  # someone else holds a live Lease


@dataclasses.dataclass(frozen=True)
class Record:
    """The Lease spec fields that election reads."""

    holder: str
    duration: float
    transitions: int
    renew_time: str

    @classmethod
    def of(cls, lease: dict[str, Any] | None) -> Record | None:
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            renew_time=str(spec.get("renewTime") or ""),
        )


@dataclasses.dataclass
class Observation:
    """The last record seen and when (local monotonic seconds) it was first seen in that form."""

    record: Record | None = None
    seen_at: float = 0.0

    def update(self, record: Record | None, now: float) -> None:
        if record != self.record:
            self.record, self.seen_at = record, now


def decide(record: Record | None, observed: Observation, identity: str, now: float) -> Action:
    """What ``identity`` should do with the Lease it just read (``observed`` already updated)."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    # Another holder: only once it has not renewed for a whole lease duration of *our* clock.
    if now - observed.seen_at >= record.duration:
        return Action.TAKE
    return Action.WAIT


def micro_time(at: dt.datetime | None = None) -> str:
    """A metav1.MicroTime (RFC 3339 with microseconds, UTC)."""
    at = at or dt.datetime.now(dt.timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def check(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period} < {self.renew_deadline} < {self.lease_duration}"
            )


class LostLease(Exception):
    """The leader could not renew within the renew deadline, or another replica holds the Lease."""


class LeaderElector:
    """Acquire, keep and release one Lease through ``client`` (a :class:`~rlaif_operator.kube.KubeClient`)."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
        relogin: Callable[[], Any] | None = None,
    ) -> None:
        timing.check()
        # A fresh client from a fresh login, for a 401: the pod's service-account token is
        # rotated by the kubelet, and a leader renews for as long as it lives.
        self.relogin = relogin
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.timing, self.clock = timing, clock
        self.observed = Observation()
        self.resource_version = ""
        self.last_renewed = 0.0
        self.path = LEASES.format(namespace=namespace) + f"/{name}"

    def _spec(self, record: Record | None, transition: bool) -> dict[str, Any]:
        now = micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "renewTime": now,
            "leaseTransitions": (record.transitions if record else 0) + (1 if transition and record else 0),
        }
        if transition or record is None:
            spec["acquireTime"] = now
        return spec

    async def try_once(self) -> bool:
        """One round: read the Lease, decide, write; True if we hold it afterwards."""
        from .kube import ApiError

        try:
            return await self._round()
        except ApiError as err:
            if err.status != 401 or self.relogin is None:
                raise
            fresh = self.relogin()
            if fresh is None:
                raise
        old, self.client = self.client, fresh
        with contextlib.suppress(Exception):
            await old.close()
        return await self._round()

    async def _round(self) -> bool:
        from .kube import ApiError

        try:
            lease = await self.client.get(self.path)
        except ApiError as err:
            if err.status != 404:
                raise
            lease = None
        record = Record.of(lease)
        now = self.clock()
        self.observed.update(record, now)
        action = decide(record, self.observed, self.identity, now)
        if action is Action.WAIT:
            return False
        try:
            if action is Action.CREATE:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None, transition=True),
                }
                written = await self.client.create(LEASES.format(namespace=self.namespace), body)
            else:
                assert lease is not None
                body = dict(lease)
                body["spec"] = {**(lease.get("spec") or {}), **self._spec(record, action is Action.TAKE)}
                # resourceVersion from the read: the write fails with 409 if anyone wrote in between.
                written = await self.client.request("PUT", self.path, body)
        except ApiError as err:
            if err.status in (409, 422) or (action is Action.CREATE and err.reason == "AlreadyExists"):
                log.info(
                    "lease %s/%s: another replica wrote first (%s)", self.namespace, self.name, err.status
                )
                return False
            raise
        self.resource_version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self.observed.update(Record.of(written), self.clock())
        self.last_renewed = self.clock()
        if action is not Action.RENEW:
            log.info(
                "lease %s/%s acquired by %s (%s)", self.namespace, self.name, self.identity, action.value
            )
        return True

    async def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        waiting_logged = False
        while True:
            try:
                if await self.try_once():
                    return
            except Exception as err:  # API down, RBAC missing: keep trying, say why
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            if not waiting_logged and self.observed.record is not None:
                log.info(
                    "standby: lease %s/%s is held by %s; waiting",
                    self.namespace,
                    self.name,
                    self.observed.record.holder,
                )
                waiting_logged = True
            await asyncio.sleep(self.timing.retry_period)

    async def keep(self) -> None:
        """Renew every retry period; raise :class:`LostLease` once renewal is impossible."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            try:
                held = await asyncio.wait_for(self.try_once(), timeout=self.timing.retry_period)
            except Exception as err:
                log.warning("lease %s/%s: renewal failed: %s", self.namespace, self.name, err)
                held = None
            if held is False and self.observed.record and self.observed.record.holder != self.identity:
                raise LostLease(
                    f"lease {self.namespace}/{self.name} is held by {self.observed.record.holder}"
                )
            if self.clock() - self.last_renewed >= self.timing.renew_deadline:
                raise LostLease(
                    f"lease {self.namespace}/{self.name} not renewed for {self.timing.renew_deadline:g}s"
                )

    async def release(self) -> None:
        """Give the Lease up (no holder), so a standby takes it at its next try."""
        from .kube import ApiError

        with contextlib.suppress(ApiError, OSError, asyncio.TimeoutError):
            lease = await self.client.get(self.path)
            record = Record.of(lease)
            if record is None or record.holder != self.identity:
                return
            body = dict(lease)
            body["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
            await self.client.request("PUT", self.path, body)
            log.info("lease %s/%s released by %s", self.namespace, self.name, self.identity)


async def standby_health(port: int) -> Callable[[], Awaitable[None]]:
    """Serve ``/healthz`` on ``port`` while waiting for the Lease (the liveness probe must pass on a
    standby); returns the coroutine function that stops it before kopf binds the same port."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    return runner.cleanup


def default_identity() -> str:
    """The pod name (downward API ``POD_NAME``), else host name and process id."""
    return os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}"
