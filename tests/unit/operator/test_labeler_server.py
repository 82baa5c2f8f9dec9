"""labeler.server: the Deployment and Service builders, the stages' endpoint, and the lifecycle the
pure core plans (created for the stages that ask the labeler, waited for, deleted when none is
left, on suspend and at the end; a server that never gets ready fails the job with its pod's state)."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

import rlaif_api as api
from rlaif_operator.builders import Owner, build_configmap
from rlaif_operator.builders import labeler_server_name as server_name
from rlaif_operator.labeler_server import build_server
from rlaif_operator.observe import (
    Observed,
    ServerInfo,
    ServerPodState,
    summarize_server,
    summarize_server_pod,
)
from rlaif_operator.plan import Plan
from rlaif_operator.settings import Settings
from rlaif_operator.timing import fmt_time
from tests.unit.operator.sim import SPEC, T0, UID, Sim, make_body

SERVED = {
    **SPEC,
    "labeler": {
        "provider": "openai",
        "model": "judge-7b",
        "mode": "pointwise",
        "principles": ["Is it helpful?"],
        "server": {"model": "org/judge-7b-instruct", "readyTimeoutSeconds": 600},
    },
    "rl": {"reward": "direct"},
}
OWNER = Owner(name="demo", namespace="ns", uid=UID)


def job(spec: dict[str, Any] | None = None) -> api.RLAIFJob:
    return api.RLAIFJob.model_validate(
        {"metadata": {"name": "demo", "namespace": "ns"}, "spec": spec or SERVED}
    )


def test_vllm_server_shape() -> None:
    deployment, service = build_server(job(), OWNER, Settings(), "trainer:1")
    pod = deployment["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["image"] == api.VLLM_IMAGE
    assert c["command"][:3] == ["vllm", "serve", "org/judge-7b-instruct"]
    cmd = c["command"]
    assert cmd[cmd.index("--served-model-name") + 1] == "judge-7b"  # what the stages send as model
    assert "--enable-prefix-caching" in cmd and cmd[cmd.index("--max-logprobs") + 1] == "20"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"} == c["resources"]["requests"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == UID
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "demo-labeler"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(service["spec"]["selector"].items()) <= set(pod["metadata"]["labels"].items())
    assert service["spec"]["ports"][0]["port"] == 8000
    assert pod["spec"]["automountServiceAccountToken"] is False
    # no workspace volume: a server pod never competes with a stage pod for a ReadWriteOnce claim
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"cache", "tmp", "dshm"}


def test_rlaif_engine_runs_rlaif_train_serve_in_the_trainer_image() -> None:
    spec = copy.deepcopy(SERVED)
    spec["labeler"]["server"] = {"engine": "rlaif", "model": "embedded:smollm2-135m-instruct", "replicas": 2}
    deployment, _ = build_server(job(spec), OWNER, Settings(), "trainer:1")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "trainer:1"
    assert c["command"][:3] == ["rlaif-train", "serve", "embedded:smollm2-135m-instruct"]
    assert "resources" not in c  # no GPU by default
    assert deployment["spec"]["replicas"] == 2


def test_server_pods_meet_pod_security_restricted() -> None:
    from tests.unit.test_chart import check_restricted

    deployment, _ = build_server(job(), OWNER, Settings(), "trainer:1")
    check_restricted(deployment["spec"]["template"]["spec"])


def test_stages_call_the_served_endpoint_the_judge_too(tmp_path) -> None:
    from rlaif_trainer.cli import _load_config  # the trainer's own reader of /etc/rlaif/<stage>.json

    data = build_configmap(job(), OWNER, Settings())["data"]
    for stage in ("label", "rl", "evaluate"):
        spec = json.loads(data[f"{stage}.json"])["spec"]
        assert spec["labeler"]["endpoint"] == "http://demo-labeler:8000/v1"
        (tmp_path / f"{stage}.json").write_text(data[f"{stage}.json"])
        loaded = _load_config(stage, str(tmp_path / f"{stage}.json"))  # the real consumer accepts it
        assert loaded.spec.labeler is not None and loaded.spec.labeler.server is None
    assert (
        json.loads(data["evaluate.json"])["spec"]["evaluation"]["judge"]["endpoint"]
        == "http://demo-labeler:8000/v1"
    )


def test_names_are_dns_1035_labels() -> None:
    assert server_name("7up") == "s7up-labeler"
    long = server_name("a" * 80)
    assert len(long) <= 63 and long.endswith("-labeler")


@pytest.mark.parametrize(
    ("labeler", "field", "words"),
    [
        ({"provider": "hf", "server": {}}, "labeler.server", "provider to openai"),
        (
            {"provider": "openai", "model": "m", "endpoint": "http://x/v1", "server": {}},
            "labeler.server",
            "not both",
        ),
        (
            {"provider": "openai", "model": "m", "server": {"replicas": 0}},
            "replicas",
            "greater than or equal",
        ),
    ],
)
def test_bad_server_specs_are_refused_with_the_field(labeler: dict, field: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        job({**SPEC, "labeler": labeler})
    assert field in str(err.value) and words in str(err.value)


def test_the_judge_cannot_have_its_own_server() -> None:
    spec = {**SERVED, "evaluation": {"judge": {"provider": "openai", "model": "j", "server": {}}}}
    with pytest.raises(ValueError, match=r"evaluation\.judge\.server"):
        job(spec)


# -- the lifecycle, through the pure core ------------------------------------------------------------


class ServerSim(Sim):
    """Sim with the labeler server: ``ensure`` creates it (not ready), ``delete_objects`` removes it."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body, Settings(trainer_image="trainer:test"))
        self.server: ServerInfo | None = None
        self.pod_state: str | None = None
        self.deleted: list[tuple[str, str, str]] = []

    def observed(self) -> Observed:
        seen = super().observed()
        server = dataclasses.replace(self.server, pod_state=self.pod_state) if self.server else None
        return dataclasses.replace(seen, server=server)

    def step(self) -> Plan:
        plan = super().step()
        for obj in plan.ensure:
            if obj["kind"] == "Deployment" and self.server is None:
                created = copy.deepcopy(obj)
                created["metadata"]["creationTimestamp"] = fmt_time(self.now)
                self.server = summarize_server(created)
        for api_version, plural, name in plan.delete_objects:
            self.deleted.append((api_version, plural, name))
            if plural == "deployments":
                self.server = None
        return plan

    def ready(self, replicas: int = 1) -> None:
        assert self.server is not None
        self.server = dataclasses.replace(self.server, ready_replicas=replicas)

    def finish_current(self) -> str:
        (name,) = self.active()
        stage = self.jobs[name]["metadata"]["labels"]["rlaif.dev/stage"]
        self.advance(5)
        self.finish(name, 0, {"stage": stage})
        return stage


def test_stages_wait_for_the_server_and_it_lives_only_while_one_asks_the_labeler() -> None:
    sim = ServerSim(make_body(spec=SERVED))
    plan = sim.step()
    assert plan.create == []  # the label stage waits for the server
    assert {o["kind"] for o in plan.ensure} >= {"Deployment", "Service"}
    assert sim.condition("LabelerServerReady")["status"] == "False"
    assert sim.condition("LabelerServerReady")["reason"] == "LabelerServerStarting"
    assert sim.condition("Running")["reason"] == "LabelerServerStarting"
    assert sim.status()["labelerServer"] == {
        "endpoint": "http://demo-labeler:8000/v1",
        "readyReplicas": 0,
        "waitingSince": fmt_time(T0),
    }
    assert sim.events("LabelerServerStarting")
    sim.pod_state = "pod demo-labeler-abc is running, not ready yet (loading the model)"
    sim.advance(30)
    sim.step()
    assert "loading the model" in sim.condition("LabelerServerReady")["message"]

    sim.ready()
    sim.advance(5)
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-label-1"]
    assert sim.condition("LabelerServerReady")["status"] == "True"
    assert sim.status()["labelerServer"]["readyReplicas"] == 1
    assert "waitingSince" not in sim.status()["labelerServer"]

    assert sim.finish_current() == "label"
    sim.step()  # reward does not ask the labeler: the server goes
    assert sim.deleted == [("apps/v1", "deployments", "demo-labeler"), ("v1", "services", "demo-labeler")]
    assert sim.condition("LabelerServerReady")["reason"] == "LabelerServerNotNeeded"
    assert "labelerServer" not in sim.status()
    assert [n for n in sim.active()] == ["demo-reward-1"]

    assert sim.finish_current() == "reward"
    plan = sim.step()  # rl with reward: direct asks it again, and waits for it
    assert sim.server is not None and plan.create == []
    assert sim.status()["labelerServer"]["waitingSince"] == fmt_time(sim.now)  # a new wait
    sim.ready()
    sim.step()
    assert sim.finish_current() == "rl"
    sim.step()
    sim.ready()  # evaluate: the judge is the labeler
    sim.step()
    assert sim.finish_current() == "evaluate"
    sim.deleted.clear()
    sim.step()
    assert sim.status()["phase"] == "Succeeded"
    assert sim.deleted and sim.server is None  # removed at the end


def test_a_server_that_never_gets_ready_fails_the_job_with_its_pod_state() -> None:
    sim = ServerSim(make_body(spec=SERVED))
    sim.step()
    sim.pod_state = "pod demo-labeler-abc: ImagePullBackOff: Back-off pulling image"
    sim.advance(599)
    sim.step()
    assert sim.status()["phase"] == "Pending"  # nothing has run yet: it waits, like for a claim
    sim.advance(2)
    sim.step()
    st = sim.status()
    assert st["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["reason"] == "LabelerServerNotReady"
    assert "readyTimeoutSeconds (600s)" in failed["message"] and "ImagePullBackOff" in failed["message"]
    assert sim.server is None  # and the server is removed
    assert sim.condition("Stalled")["status"] == "True"


def test_suspend_removes_the_server_and_resume_brings_it_back() -> None:
    sim = ServerSim(make_body(spec=SERVED))
    sim.step()
    sim.body["spec"]["runPolicy"]["suspend"] = True
    sim.step()
    assert sim.server is None and sim.status()["phase"] == "Suspended"
    sim.body["spec"]["runPolicy"]["suspend"] = False
    sim.advance(10)
    sim.step()
    assert sim.server is not None


def test_a_job_without_a_server_has_no_server_condition() -> None:
    sim = Sim()
    sim.step()
    assert all(c["type"] != "LabelerServerReady" for c in sim.status()["conditions"])


def test_server_pod_states_read_from_real_pod_shapes() -> None:
    labels = {"rlaif.dev/component": "labeler-server", "rlaif.dev/server": "demo-labeler"}
    pull = {
        "metadata": {"name": "demo-labeler-x", "labels": labels},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "nope"}},
                }
            ],
        },
    }
    assert summarize_server_pod(pull) == (
        "demo-labeler",
        ServerPodState(False, "pod demo-labeler-x: ImagePullBackOff: nope"),
    )
    crash = copy.deepcopy(pull)
    crash["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    crash["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert (
        "CrashLoopBackOff" in summarize_server_pod(crash)[1].state
        and "last exit code 1" in summarize_server_pod(crash)[1].state
    )
    unscheduled = {
        "metadata": {"name": "p", "labels": labels},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes have nvidia.com/gpu",
                }
            ],
        },
    }
    assert "Unschedulable: 0/3 nodes" in summarize_server_pod(unscheduled)[1].state
    serving = copy.deepcopy(pull)
    serving["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": "server", "ready": True, "state": {"running": {}}}],
    }
    assert summarize_server_pod(serving) == (
        "demo-labeler",
        ServerPodState(True, "pod demo-labeler-x is ready"),
    )
    assert summarize_server_pod({"metadata": {"name": "stage-pod", "labels": {}}}) is None
    when = fmt_time(T0 + timedelta(seconds=1))
    assert (
        summarize_server({"metadata": {"name": "d", "labels": labels, "creationTimestamp": when}}).created
        == when
    )
