"""A tiny in-memory stand-in for the API server, to drive the pure reconcile core through lifecycles.

``Sim.step()`` runs :func:`reconcile` on the current RLAIFJob and children, then applies the plan
the way the operator's executor would: creates and deletes stage Jobs, writes the status.
Tests then move the clock and finish pods with exit codes and termination messages.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from rlaif_operator.observe import JobInfo, Observed, PodInfo, summarize_job
from rlaif_operator.plan import Plan
from rlaif_operator.reconcile import reconcile
from rlaif_operator.settings import Settings
from rlaif_operator.timing import fmt_time

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
UID = "uid-1234"

SPEC: dict[str, Any] = {
    "policy": {"model": "embedded:smollm2-135m-instruct"},
    "dataset": {"prompts": "data/prompts.jsonl"},
    "labeler": {"provider": "hf", "mode": "pointwise", "principles": ["Is it helpful?"]},
    "runPolicy": {"backoffLimit": 2, "backoffSeconds": 10},
}


def make_body(name: str = "demo", spec: dict[str, Any] | None = None, **run_policy: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec if spec is not None else SPEC)
    spec.setdefault("runPolicy", {}).update(run_policy)
    return {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1},
        "spec": spec,
    }


class Sim:
    def __init__(self, body: dict[str, Any] | None = None, settings: Settings | None = None) -> None:
        self.body = body if body is not None else make_body()
        self.settings = settings or Settings(trainer_image="trainer:test")
        self.now = T0
        self.jobs: dict[str, dict[str, Any]] = {}  # name -> manifest (with status)
        self.pods: dict[str, PodInfo] = {}  # by job name
        self.claims: frozenset[str] | None = frozenset()
        self.plans: list[Plan] = []
        self.deleted_self = False

    # -- observation -------------------------------------------------------------------------
    def observed(self) -> Observed:
        infos: list[JobInfo] = []
        for manifest in self.jobs.values():
            info = summarize_job(manifest)
            assert info is not None
            infos.append(info)
        return Observed(jobs=infos, pods={k: [v] for k, v in self.pods.items()}, claims=self.claims)

    # -- the loop ----------------------------------------------------------------------------
    def step(self) -> Plan:
        plan = reconcile(copy.deepcopy(self.body), self.observed(), self.now, self.settings)
        self.plans.append(plan)
        for name in plan.delete:
            self.jobs.pop(name, None)
            self.pods.pop(name, None)
        for manifest in plan.create:
            name = manifest["metadata"]["name"]
            assert name not in self.jobs, f"duplicate Job {name}"
            created = copy.deepcopy(manifest)
            created["metadata"]["creationTimestamp"] = fmt_time(self.now)
            created["metadata"]["ownerReferences"][0]["uid"] = self.body["metadata"]["uid"]
            created["status"] = {}
            self.jobs[name] = created
        if plan.status is not None:
            self.body["status"] = copy.deepcopy(plan.status)
        if plan.delete_self:
            self.deleted_self = True
        return plan

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # -- children ----------------------------------------------------------------------------
    def active(self) -> list[str]:
        return sorted(n for n, j in self.jobs.items() if not (j.get("status") or {}).get("conditions"))

    def finish(self, name: str, exit_code: int = 0, message: Any = None, pod_only: bool = False) -> None:
        text = message if isinstance(message, str) or message is None else json.dumps(message)
        self.pods[name] = PodInfo(
            name=f"{name}-pod",
            job_name=name,
            phase="Succeeded" if exit_code == 0 else "Failed",
            exit_code=exit_code,
            message=text,
            started_at=fmt_time(self.now - timedelta(seconds=5)),
            finished_at=fmt_time(self.now),
        )
        if not pod_only:
            ctype = "Complete" if exit_code == 0 else "Failed"
            self.jobs[name]["status"] = {
                "conditions": [{"type": ctype, "status": "True", "lastTransitionTime": fmt_time(self.now)}]
            }

    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def condition(self, ctype: str) -> dict[str, Any]:
        return next(c for c in self.status()["conditions"] if c["type"] == ctype)

    def events(self, reason: str | None = None) -> list[str]:
        return [
            f"{e.reason}: {e.message}" for p in self.plans for e in p.events if reason in (None, e.reason)
        ]

    def run_to_end(self, summaries: dict[str, dict[str, Any]] | None = None) -> None:
        for _ in range(20):
            self.step()
            live = self.active()
            if not live:
                break
            for name in live:
                stage = self.jobs[name]["metadata"]["labels"]["rlaif.dev/stage"]
                self.advance(5)
                self.finish(name, 0, (summaries or {}).get(stage, {"stage": stage}))
        self.step()
