"""The controller's executor and work queue, against a fake API client (no cluster)."""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import pytest

from rlaif_operator.controller import Controller, Indexes, merge_patch, retry_delay
from rlaif_operator.kube import ApiError
from rlaif_operator.metrics import Metrics
from rlaif_operator.settings import Settings
from tests.unit.operator.sim import Sim, make_body

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.objects: dict[str, Any] = {}
        self.fail_with: Exception | None = None
        self.rv = 100

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        if self.fail_with is not None:
            raise self.fail_with
        if method == "POST" and not path.endswith("/events"):
            name = body["metadata"]["name"]
            key = f"{path}/{name}"
            if key in self.objects:
                raise ApiError(409, {"reason": "AlreadyExists"}, method, path)
            self.objects[key] = body
            return body
        if method == "PATCH" and path.endswith("/status"):
            self.rv += 1
            job = copy.deepcopy(BODY)
            job["metadata"]["resourceVersion"] = str(self.rv)
            job["status"] = body["status"]
            return job
        return body

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def merge_patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body)

    async def close(self) -> None:
        pass

    def posts(self, suffix: str) -> list[Any]:
        return [b for m, p, b in self.calls if m == "POST" and p.endswith(suffix)]


BODY = make_body()
BODY["metadata"]["resourceVersion"] = "10"


def controller(client: FakeClient, jobs_index: dict[Any, list[Any]] | None = None) -> Controller:
    index: dict[Any, list[Any]] = defaultdict(list, {("ns", "demo"): [copy.deepcopy(BODY)]})
    indexes = Indexes(index, jobs_index or {}, {}, {"ns": []})
    return Controller(client, indexes, Settings(trainer_image="t:1"), Metrics(), workers=2, clock=lambda: NOW)  # type: ignore[arg-type]


def test_first_pass_creates_configmap_pvc_job_events_and_status() -> None:
    client = FakeClient()
    ctrl = controller(client)
    plan = asyncio.run(ctrl.reconcile_key(("ns", "demo")))
    assert plan is not None
    assert [
        b["kind"]
        for b in client.posts("/configmaps") + client.posts("/persistentvolumeclaims") + client.posts("/jobs")
    ] == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
    ]
    assert {b["reason"] for b in client.posts("/events")} == {"StageStarted", "PhaseChanged"}
    patches = [(p, b) for m, p, b in client.calls if m == "PATCH"]
    assert len(patches) == 1 and patches[0][0].endswith("/rlaifjobs/demo/status")
    assert patches[0][1]["status"]["phase"] == "Labeling"
    # a pass that creates a Job announces it only once the Job exists, and before the status
    # write that records it (at least once)
    order = [(m, p.rsplit("/", 1)[-1]) for m, p, _ in client.calls]
    assert order.index(("POST", "jobs")) < order.index(("POST", "events")) < order.index(("PATCH", "status"))
    assert client.calls[-1][0] == "PATCH"


def test_second_pass_before_the_watch_catches_up_does_not_duplicate() -> None:
    client = FakeClient()
    ctrl = controller(client)
    asyncio.run(ctrl.reconcile_key(("ns", "demo")))
    before = len(client.calls)
    # the index still has the old RLAIFJob and no Job: the caches must cover the lag
    plan = asyncio.run(ctrl.reconcile_key(("ns", "demo")))
    assert plan is not None and plan.create == [] and plan.events == [] and plan.status is None
    assert len(client.calls) == before  # ConfigMap/PVC known, nothing to write


def test_already_existing_job_is_adopted_and_rechecked() -> None:
    client = FakeClient()
    client.objects["/apis/batch/v1/namespaces/ns/jobs/demo-label-1"] = {}
    ctrl = controller(client)

    async def run() -> None:
        await ctrl.reconcile_key(("ns", "demo"))
        assert ("ns", "demo") in ctrl.timers  # looks again soon, once the index shows the Job
        await ctrl.stop()

    asyncio.run(run())


def test_api_errors_are_retried_with_bounded_backoff() -> None:
    client = FakeClient()
    client.fail_with = ApiError(503, {"message": "unavailable"}, "POST", "/x")
    ctrl = controller(client)

    async def run() -> None:
        ctrl.start()
        ctrl.enqueue(("ns", "demo"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ctrl.failures.get(("ns", "demo")):
                break
        assert ctrl.failures[("ns", "demo")] == 1
        assert ("ns", "demo") in ctrl.timers
        await ctrl.stop()

    asyncio.run(run())
    assert retry_delay(1) == 0.5 and retry_delay(4) == 4 and retry_delay(50) == 30


def test_deleted_rlaifjob_is_forgotten() -> None:
    client = FakeClient()
    ctrl = controller(client)
    ctrl.indexes.jobs.clear()  # type: ignore[attr-defined]
    assert asyncio.run(ctrl.reconcile_key(("ns", "demo"))) is None
    assert client.calls == []


@pytest.mark.parametrize("workers", [1, 4])
def test_queue_dedupes_keys(workers: int) -> None:
    client = FakeClient()
    ctrl = controller(client)
    ctrl.workers = workers
    seen: list[Any] = []

    async def fake(key: Any) -> None:
        seen.append(key)
        await asyncio.sleep(0.01)

    ctrl.reconcile_key = fake  # type: ignore[assignment,method-assign]

    async def run() -> None:
        ctrl.start()
        for _ in range(10):
            ctrl.enqueue(("ns", "demo"))
        await asyncio.sleep(0.005)
        for _ in range(10):
            ctrl.enqueue(("ns", "demo"))  # arrives mid-reconcile: exactly one more pass
        await asyncio.sleep(0.1)
        await ctrl.stop()

    asyncio.run(run())
    assert seen == [("ns", "demo"), ("ns", "demo")]


def test_echo_of_our_own_status_write_is_recognised() -> None:
    client = FakeClient()
    ctrl = controller(client)
    asyncio.run(ctrl.reconcile_key(("ns", "demo")))
    echo = {"metadata": {"resourceVersion": str(client.rv)}}
    assert ctrl.is_own_echo(("ns", "demo"), echo)
    assert not ctrl.is_own_echo(("ns", "demo"), {"metadata": {"resourceVersion": str(client.rv + 1)}})
    assert not ctrl.is_own_echo(("ns", "other"), echo)


def test_child_events_that_change_nothing_the_core_sees_are_not_queued() -> None:
    from rlaif_operator.observe import PodInfo

    ctrl = controller(FakeClient())
    pending = PodInfo(name="p", job_name="demo-label-1")
    owner = ("ns", "demo")
    assert ctrl.child_event(owner, "uid-p", pending)
    assert not ctrl.child_event(owner, "uid-p", PodInfo(name="p", job_name="demo-label-1"))  # e.g. scheduled
    assert ctrl.child_event(owner, "uid-p", PodInfo(name="p", job_name="demo-label-1", phase="Running"))
    assert ctrl.child_event(owner, "uid-p", None, deleted=True)
    assert ctrl.child_event(owner, "uid-p", pending)  # after a deletion, the next sighting is news again
    assert ctrl.child_event(owner, "", pending) and ctrl.child_event(
        owner, "", pending
    )  # no uid: never skipped
    assert not ctrl.child_event(None, "uid-q", pending)  # not one of ours: nothing to queue
    assert ctrl.queued == {owner} and ctrl.queue.qsize() == 1  # queued, deduplicated
    ctrl.child_event(owner, "uid-lost", pending)  # its DELETED event will never come (lost in a relist)
    ctrl.forget(owner, None)
    assert owner not in ctrl.summaries  # forgetting the RLAIFJob forgets its children's summaries
    ctrl.child_event(owner, "uid-p", None, deleted=True)  # garbage collection after the RLAIFJob went
    assert owner not in ctrl.summaries


def test_recent_writes_are_kept_per_rlaifjob_and_expire() -> None:
    client = FakeClient()
    ctrl = controller(client)
    asyncio.run(ctrl.reconcile_key(("ns", "demo")))
    assert list(ctrl.created) == [("ns", "demo")]
    assert [j.name for j in ctrl.observe("ns", "demo", BODY["metadata"]["uid"]).jobs] == ["demo-label-1"]
    assert ctrl.observe("ns", "other", BODY["metadata"]["uid"]).jobs == []
    assert ctrl.observe("ns", "demo", "a-newer-rlaifjob-of-that-name").jobs == []
    ctrl.deleted[("ns", "gone")] = 0.0
    for jobs in ctrl.created.values():
        for name, (_, info) in jobs.items():
            jobs[name] = (0.0, info)  # long ago
    ctrl.expire_writes()
    assert ctrl.created == {} and ctrl.deleted == {}
    ctrl.forget(("ns", "demo"), None)
    assert ("ns", "demo") not in ctrl.ensured


class RefusingClient(FakeClient):
    """Refuses stage Jobs the way a ResourceQuota's admission does, until ``refuse`` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        if self.refuse and method == "POST" and path.endswith("/jobs"):
            self.calls.append((method, path, body))
            message = 'jobs.batch "demo-label-1" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1'
            raise ApiError(403, {"reason": "Forbidden", "message": message}, method, path)
        return await super().request(method, path, body, **kw)


def test_a_refused_stage_job_is_reported_retried_with_backoff_and_never_announced() -> None:
    from rlaif_operator.controller import REFUSAL_RETRY_BASE_SECONDS

    client = RefusingClient()
    ctrl = controller(client)
    key = ("ns", "demo")

    async def run() -> None:
        await ctrl.reconcile_key(key)
        # planned again with the refusal seen: the status and the events tell the truth
        events = {b["reason"]: b for b in client.posts("/events")}
        assert "StageStarted" not in events and "PhaseChanged" not in events
        assert events["StageJobRefused"]["type"] == "Warning"
        assert "exceeded quota: no-jobs" in events["StageJobRefused"]["message"]
        status = [b for m, p, b in client.calls if m == "PATCH"][-1]["status"]
        running = next(c for c in status["conditions"] if c["type"] == "Running")
        assert status["phase"] == "Pending" and (running["status"], running["reason"]) == (
            "False",
            "StageJobRefused",
        )
        assert "demo-label-1" in running["message"] and "exceeded quota" in running["message"]
        assert key in ctrl.timers  # tried again after the backoff
        assert 0 < ctrl.timers[key][0] - asyncio.get_running_loop().time() <= REFUSAL_RETRY_BASE_SECONDS + 0.1

        # before the backoff ends, a pass (another event, say) neither creates nor writes
        calls = len(client.calls)
        await ctrl.reconcile_key(key)
        assert len(client.calls) == calls

        # refused again once the backoff ends: twice as long, still one event in all
        ctrl.refusals[key]["demo-label-1"].until = 0.0
        await ctrl.reconcile_key(key)
        assert len(client.posts("/jobs")) == 2 and ctrl.refusals[key]["demo-label-1"].count == 2
        assert len([b for b in client.posts("/events") if b["reason"] == "StageJobRefused"]) == 1

        # the quota is lifted: the next retry creates the Job, and only then is it announced
        client.refuse = False
        ctrl.refusals[key]["demo-label-1"].until = 0.0
        await ctrl.reconcile_key(key)
        assert client.objects.get("/apis/batch/v1/namespaces/ns/jobs/demo-label-1") is not None
        assert {"StageStarted", "PhaseChanged"} <= {b["reason"] for b in client.posts("/events")}
        assert "demo-label-1" not in ctrl.refusals[key]
        await ctrl.stop()

    asyncio.run(run())


def test_a_new_spec_retries_a_refused_stage_job_at_once() -> None:
    client = RefusingClient()
    ctrl = controller(client)
    key = ("ns", "demo")
    asyncio.run(ctrl.reconcile_key(key))
    assert len(client.posts("/jobs")) == 1
    fixed = copy.deepcopy(BODY)
    fixed["metadata"]["generation"] = 2
    fixed["metadata"]["resourceVersion"] = str(client.rv + 1)
    ctrl.indexes.jobs[key].append(fixed)  # type: ignore[attr-defined]
    client.refuse = False
    asyncio.run(ctrl.reconcile_key(key))
    assert (
        len(client.posts("/jobs")) == 2 and "/apis/batch/v1/namespaces/ns/jobs/demo-label-1" in client.objects
    )


def test_merge_patch_contains_changes_and_nulls_for_removed_keys() -> None:
    old = {
        "phase": "Labeling",
        "stages": {"label": {"state": "Pending", "nextRetryTime": "t"}},
        "conditions": [1, 2],
    }
    new = {
        "phase": "Labeling",
        "stages": {"label": {"state": "Running"}},
        "conditions": [1, 3],
        "progress": "0/4",
    }
    patch = merge_patch(old, new)
    assert patch == {
        "stages": {"label": {"state": "Running", "nextRetryTime": None}},
        "conditions": [1, 3],
        "progress": "0/4",
    }
    assert merge_patch(new, new) == {}


def test_merge_patch_applied_reproduces_new() -> None:
    def apply(target: dict, patch: dict) -> dict:
        out = copy.deepcopy(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = apply(out[k], v)
            else:
                out[k] = v
        return out

    sim = Sim()
    sim.step()
    before = copy.deepcopy(sim.status())
    sim.finish("demo-label-1", 1)
    sim.step()
    after = sim.status()
    assert apply(before, merge_patch(before, after)) == after
