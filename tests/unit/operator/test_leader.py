"""Leader election's decisions (rlaif_operator.leader) without a cluster.

:func:`decide` is pure. The :class:`LeaderElector` rounds run against ``LeaseStore``, an in-memory
stand-in for the API server's Lease endpoint that keeps its one behaviour election relies on:
a write carrying a stale resourceVersion is refused with 409 (and a second create with 409
AlreadyExists). The real API server is exercised in tests/integration/test_operator_ha.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from rlaif_operator.kube import ApiError
from rlaif_operator.leader import Action, LeaderElector, LostLease, Observation, Record, Timing, decide

ME, OTHER = "op-a", "op-b"


def rec(holder: str, duration: float = 15, renew: str = "t1", transitions: int = 0) -> Record:
    return Record(holder=holder, duration=duration, transitions=transitions, renew_time=renew)


def observed(record: Record | None, at: float) -> Observation:
    o = Observation()
    o.update(record, at)
    return o


def test_absent_lease_is_created():
    assert decide(None, observed(None, 0), ME, 0) is Action.CREATE


def test_own_lease_is_renewed():
    r = rec(ME)
    assert decide(r, observed(r, 0), ME, 100) is Action.RENEW


def test_released_lease_is_taken_at_once():
    r = rec("")
    assert decide(r, observed(r, 50), ME, 50) is Action.TAKE


def test_live_lease_of_another_is_left_alone_until_a_full_duration_passed_unchanged():
    r = rec(OTHER, duration=15)
    o = observed(r, 100.0)
    assert decide(r, o, ME, 100.0) is Action.WAIT
    assert decide(r, o, ME, 114.9) is Action.WAIT
    assert decide(r, o, ME, 115.0) is Action.TAKE


def test_a_renewal_restarts_the_standbys_clock():
    # Expiry is measured from when *this* replica saw the record change, not from renewTime
    # (whose clock may be skewed): a renewal seen at 110 keeps the holder until 125.
    o = observed(rec(OTHER, renew="t1"), 100.0)
    renewed = rec(OTHER, renew="t2")
    o.update(renewed, 110.0)
    assert decide(renewed, o, ME, 120.0) is Action.WAIT
    assert decide(renewed, o, ME, 125.0) is Action.TAKE
    # The same record read again does not move the clock.
    o.update(rec(OTHER, renew="t2"), 124.0)
    assert o.seen_at == 110.0


@pytest.mark.parametrize("timing", [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)])
def test_timing_must_leave_a_gap_between_renew_deadline_and_lease_duration(timing):
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timing(*timing).check()


class LeaseStore:
    """The Lease endpoint's optimistic concurrency, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _bump(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.lease = body
        return copy.deepcopy(body)

    def client(self) -> Any:
        store = self

        class Client:
            async def get(self, path: str) -> Any:
                if store.down:
                    raise OSError("connection refused")
                if store.lease is None:
                    raise ApiError(404, {"reason": "NotFound"}, "GET", path)
                return copy.deepcopy(store.lease)

            async def create(self, path: str, body: dict[str, Any]) -> Any:
                if store.down:
                    raise OSError("connection refused")
                if store.lease is not None:
                    raise ApiError(409, {"reason": "AlreadyExists"}, "POST", path)
                return store._bump(body)

            async def request(self, method: str, path: str, body: dict[str, Any]) -> Any:
                assert method == "PUT"
                if store.down:
                    raise OSError("connection refused")
                assert store.lease is not None
                if body["metadata"]["resourceVersion"] != store.lease["metadata"]["resourceVersion"]:
                    raise ApiError(409, {"reason": "Conflict"}, method, path)
                return store._bump(body)

        return Client()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)


def elector(store: LeaseStore, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(store.client(), "rlaif-system", "rlaif-operator", identity, TIMING, clock=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_two_candidates_one_leader_and_takeover_only_after_expiry():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "op-a", clock), elector(store, "op-b", clock)
    assert run(a.try_once()) is True
    assert run(b.try_once()) is False  # a holds a fresh lease
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "op-a"
    assert store.lease["spec"]["leaseDurationSeconds"] == 15
    # a renews; b keeps waiting as long as renewals keep coming.
    for _ in range(5):
        clock.now += 2
        assert run(a.try_once()) is True
        assert run(b.try_once()) is False
    # a dies (no more renewals): b takes over once 15 s of b's clock have passed since its last
    # sight of a change, and not a moment before.
    clock.now += 14.9
    assert run(b.try_once()) is False
    clock.now += 0.1
    assert run(b.try_once()) is True
    spec = store.lease["spec"]
    assert spec["holderIdentity"] == "op-b" and spec["leaseTransitions"] == 1


def test_of_two_simultaneous_takers_only_one_wins():
    store, clock = LeaseStore(), Clock()
    store._bump(
        {"metadata": {"name": "rlaif-operator"}, "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}}
    )
    a, b = elector(store, "op-a", clock), elector(store, "op-b", clock)

    stale = copy.deepcopy(store.lease)
    assert run(a.try_once()) is True
    # b read the released lease before a's write landed: its write carries the old version.
    b_client = b.client
    original_get = b_client.get

    async def stale_get(path: str) -> Any:
        return copy.deepcopy(stale)

    b_client.get = stale_get
    assert run(b.try_once()) is False
    b_client.get = original_get
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "op-a"


def test_release_hands_over_at_the_next_try():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "op-a", clock), elector(store, "op-b", clock)
    assert run(a.try_once()) is True
    assert run(b.try_once()) is False
    run(a.release())
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] is None
    assert run(b.try_once()) is True
    # A replica that no longer holds the lease does not release it from the new holder.
    run(a.release())
    assert store.lease["spec"]["holderIdentity"] == "op-b"


def test_leader_gives_up_when_it_cannot_renew_within_the_deadline():
    store, clock = LeaseStore(), Clock()
    a = elector(store, "op-a", clock)
    a.timing = Timing(lease_duration=0.5, renew_deadline=0.3, retry_period=0.01)
    assert run(a.try_once()) is True
    store.down = True

    async def keep() -> None:
        clock.now += 0.31  # the last renewal lies beyond the deadline
        await a.keep()

    with pytest.raises(LostLease, match="not renewed"):
        run(keep())


def test_leader_gives_up_when_another_holds_the_lease():
    store, clock = LeaseStore(), Clock()
    a = elector(store, "op-a", clock)
    a.timing = Timing(lease_duration=0.5, renew_deadline=0.3, retry_period=0.01)
    assert run(a.try_once()) is True
    assert store.lease is not None
    store._bump({**store.lease, "spec": {**store.lease["spec"], "holderIdentity": "op-b"}})
    with pytest.raises(LostLease, match="held by op-b"):
        run(a.keep())


def test_cli_refuses_leader_election_without_a_namespace_or_with_bad_timing(monkeypatch, capsys):
    from rlaif_operator.__main__ import main

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["-A", "--leader-election", "ops"])
    assert exc.value.code == 2 and "--leader-election-namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["-A", "--leader-election", "ops", "--leader-election-namespace", "x", "--renew-deadline", "20"])
    assert exc.value.code == 2 and "renew deadline < lease duration" in capsys.readouterr().err


def test_identity_defaults_to_the_pod_name(monkeypatch):
    from rlaif_operator.leader import default_identity

    monkeypatch.setenv("POD_NAME", "rlaif-operator-7d9f-abcde")
    assert default_identity() == "rlaif-operator-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    assert default_identity().endswith(f"-{__import__('os').getpid()}")


def test_a_401_logs_in_again_and_retries_with_the_fresh_client():
    """The kubelet rotates the service-account token: a 401 means "read the token again"."""
    store, clock = LeaseStore(), Clock()
    expired = store.client()

    async def unauthorized(path: str) -> Any:
        raise ApiError(401, {"reason": "Unauthorized"}, "GET", path)

    expired.get = unauthorized
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    expired.close = close
    logins: list[Any] = []

    def relogin() -> Any:
        logins.append(store.client())
        return logins[-1]

    a = LeaderElector(expired, "ns", "lease", "op-a", TIMING, clock=clock, relogin=relogin)
    assert run(a.try_once()) is True
    assert len(logins) == 1 and a.client is logins[0] and closed == [True]
    # Without a way to log in again, the 401 surfaces.
    b = LeaderElector(expired, "ns", "lease", "op-b", TIMING, clock=clock)
    with pytest.raises(ApiError, match="401"):
        run(b.try_once())
