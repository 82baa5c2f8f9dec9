"""Multi-node stages on the operator's side, without a cluster: the JobSet the builder makes for
``resources.<stage>.nodes > 1``, how an attempt is read from a JobSet and its ranks, and what the
reconcile core does with them (retry accounting, suspend, no JobSet API)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from rlaif_api import contract
from rlaif_operator import builders as b
from rlaif_operator.observe import JobInfo, Observed, PodInfo, attempt_of, summarize_jobset, summarize_pod
from rlaif_operator.plan import Plan
from rlaif_operator.reconcile import reconcile
from rlaif_operator.settings import Settings
from rlaif_operator.timing import fmt_time
from tests.unit.operator.sim import SPEC, Sim, make_body
from tests.unit.operator.test_builders import SETTINGS, job

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _jobset(
    nodes: int = 2, stage: str = "reward", name: str = "demo", settings: Settings = SETTINGS, **spec: Any
) -> dict[str, Any]:
    model, owner = job(name, resources={"default": {"gpus": 4}, stage: {"nodes": nodes}}, **spec)
    return b.build_stage_child(model, owner, stage, 1, settings, "trainer:1")


def _replicated(manifest: dict[str, Any]) -> dict[str, Any]:
    (rjob,) = manifest["spec"]["replicatedJobs"]
    return rjob


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    (c,) = _replicated(manifest)["template"]["spec"]["template"]["spec"]["containers"]
    return c


# -- the JobSet ------------------------------------------------------------------------------------


def test_one_node_is_a_job_and_more_nodes_a_jobset_of_indexed_pods() -> None:
    model, owner = job(resources={"default": {"gpus": 2}})
    assert b.build_stage_child(model, owner, "reward", 1, SETTINGS, "t")["kind"] == "Job"
    manifest = _jobset(nodes=3)
    assert (manifest["apiVersion"], manifest["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert manifest["metadata"]["name"] == "demo-reward-1"
    rjob = _replicated(manifest)
    assert (rjob["name"], rjob["replicas"]) == ("node", 1)
    child = rjob["template"]["spec"]
    assert (child["completionMode"], child["completions"], child["parallelism"]) == ("Indexed", 3, 3)
    # every node gets the stage's per-pod resources: nodes multiply pods, not a pod's GPUs
    assert _container(manifest)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_policies_keep_the_operators_retry_accounting() -> None:
    spec = _jobset()["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 0}  # JobSet never recreates: the operator retries
    assert _replicated(_jobset())["template"]["spec"]["backoffLimit"] == 0  # one failed pod fails it
    assert spec["successPolicy"] == {"operator": "All"}  # done when every rank finished
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert "suspend" not in spec  # no queue: it runs at once


def test_each_node_runs_one_launcher_with_its_rank_and_rank_zeros_hostname() -> None:
    manifest = _jobset(nodes=2)
    name = manifest["metadata"]["name"]
    command = _container(manifest)["command"]

    def flag(key: str) -> str:
        return command[command.index(key) + 1]

    assert command[:2] == ["accelerate", "launch"]
    assert flag("--num_machines") == "2"
    assert flag("--num_processes") == "8"  # 4 GPUs on each of 2 nodes
    # the kubelet substitutes the Job controller's completion index: the node rank
    assert flag("--machine_rank") == "$(JOB_COMPLETION_INDEX)"
    assert flag("--main_process_ip") == f"{name}-node-0-0.{name}" == b.rank_zero_host(name)
    assert flag("--main_process_port") == str(contract.RENDEZVOUS_PORT)
    module = command.index("-m")
    assert command[module + 1 : module + 4] == [contract.TRAINER_MODULE, "reward", "--config"]
    assert flag("--config") == "/etc/rlaif/reward.json"


def test_the_pods_keep_the_stage_pod_contract() -> None:
    manifest = _jobset()
    meta = manifest["metadata"]
    assert meta["labels"][b.LABEL_STAGE] == "reward" and meta["labels"][b.LABEL_ATTEMPT] == "1"
    assert meta["ownerReferences"][0]["kind"] == "RLAIFJob" and meta["ownerReferences"][0]["controller"]
    template = _replicated(manifest)["template"]["spec"]["template"]
    # the operator's pod index finds the ranks by these, and their owner by the annotation
    assert template["metadata"]["labels"][b.LABEL_STAGE] == "reward"
    assert template["metadata"]["annotations"][b.ANNOTATION_JOB_NAME] == "demo"
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = _container(manifest)
    assert c["terminationMessagePath"] == contract.TERMINATION_LOG
    assert {"name": "rendezvous", "containerPort": contract.RENDEZVOUS_PORT, "protocol": "TCP"} in c["ports"]
    assert {v["name"]: v.get("value") for v in c["env"]}[contract.ENV_STAGE] == "reward"


def test_the_queue_label_goes_on_the_jobset_which_starts_suspended() -> None:
    manifest = _jobset(runPolicy={**SPEC["runPolicy"], "queueName": "team-a"})
    assert manifest["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "team-a"
    assert manifest["spec"]["suspend"] is True
    child = _replicated(manifest)["template"]["spec"]
    assert "suspend" not in child  # the JobSet's suspend is what Kueue flips


@pytest.mark.parametrize("name", ["demo", "7b-run", "a" * 63, "x.y.z-" + "long" * 12, "9" * 40])
def test_jobset_names_fit_jobsets_own_limits(name: str) -> None:
    for attempt in (1, 12, 999):
        js = b.stage_jobset_name(name, "reward", attempt)
        assert DNS_1035.match(js), js
        # JobSet refuses a name whose longest pod name, <name>-node-0-127-xxxxx, is over 63
        assert len(f"{js}-node-0-127-abcde") <= 63, js
        assert js == b.stage_jobset_name(name, "reward", attempt)  # deterministic
        assert js.endswith(f"-reward-{attempt}")
    assert b.stage_jobset_name("demo", "rl", 2) == "demo-rl-2"  # the stage Job's name when it fits


# -- observing a JobSet ----------------------------------------------------------------------------


def _observed_jobset(manifest: dict[str, Any], conditions: list[dict[str, Any]] | None = None) -> JobInfo:
    body = copy.deepcopy(manifest)
    body["metadata"]["creationTimestamp"] = "2026-01-01T12:00:00Z"
    body["status"] = {"conditions": conditions or []}
    info = summarize_jobset(body)
    assert info is not None
    return info


def test_summarize_jobset_reads_its_conditions_as_a_jobs() -> None:
    manifest = _jobset(nodes=4)
    running = _observed_jobset(manifest)
    assert (running.kind, running.completions, running.attempt, running.stage) == ("JobSet", 4, 1, "reward")
    assert running.started == "2026-01-01T12:00:00Z" and not (running.complete or running.failed)
    done = _observed_jobset(
        manifest, [{"type": "Completed", "status": "True", "lastTransitionTime": "2026-01-01T12:05:00Z"}]
    )
    assert done.complete and done.finished_at == "2026-01-01T12:05:00Z"
    failed = _observed_jobset(
        manifest,
        [
            {
                "type": "Failed",
                "status": "True",
                "reason": "FailedJobs",
                "message": "jobset failed",
                "lastTransitionTime": "t",
            }
        ],
    )
    assert failed.failed and failed.failed_message == "jobset failed"
    queued = copy.deepcopy(manifest)
    queued["spec"]["suspend"] = True
    info = _observed_jobset(queued)
    assert info.suspended and info.started is None
    admitted = _observed_jobset(
        manifest, [{"type": "Suspended", "status": "False", "lastTransitionTime": "2026-01-01T12:03:00Z"}]
    )
    assert admitted.started == "2026-01-01T12:03:00Z"  # Kueue's admission
    assert summarize_jobset({"metadata": {"name": "other"}}) is None  # not a stage's


def test_a_jobsets_pods_are_keyed_by_the_jobset_with_their_rank() -> None:
    pod = {
        "metadata": {
            "name": "demo-reward-1-node-0-1-abcde",
            "labels": {
                "batch.kubernetes.io/job-name": "demo-reward-1-node-0",
                "jobset.sigs.k8s.io/jobset-name": "demo-reward-1",
                "batch.kubernetes.io/job-completion-index": "1",
            },
        },
        "status": {"phase": "Running"},
    }
    info = summarize_pod(pod)
    assert info is not None and (info.job_name, info.rank) == ("demo-reward-1", 1)


def _rank(
    i: int, phase: str, exit_code: int | None = None, message: Any = None, at: str = "12:01:00"
) -> PodInfo:
    return PodInfo(
        name=f"demo-reward-1-node-0-{i}-x",
        job_name="demo-reward-1",
        phase=phase,
        exit_code=exit_code if exit_code is not None else (0 if phase == "Succeeded" else None),
        message=json.dumps(message) if isinstance(message, dict) else message,
        finished_at=f"2026-01-01T{at}Z" if phase in ("Succeeded", "Failed") else None,
        rank=i,
    )


def test_an_attempt_is_done_when_the_jobset_is_and_speaks_through_rank_zero() -> None:
    manifest = _jobset(nodes=2)
    summary = {"stage": "reward", "accuracy": 0.8}
    # rank 0 finished first, rank 1 still runs: not done
    running = _observed_jobset(manifest)
    assert (
        attempt_of(running, [_rank(0, "Succeeded", message=summary), _rank(1, "Running")]).outcome == "active"
    )
    done = _observed_jobset(manifest, [{"type": "Completed", "status": "True", "lastTransitionTime": "t"}])
    ranks = [
        _rank(1, "Succeeded", message={"stage": "reward", "rank": 1}),
        _rank(0, "Succeeded", message=summary),
    ]
    result = attempt_of(done, ranks)
    assert result.outcome == "succeeded" and result.summary == summary


def test_a_rank_that_dies_fails_the_attempt_once_with_its_own_exit_code() -> None:
    manifest = _jobset(nodes=3)
    failed = _observed_jobset(manifest, [{"type": "Failed", "status": "True", "lastTransitionTime": "t"}])
    # rank 2 died (exit 1); the Job controller then stopped ranks 0 and 1 (137), later
    pods = [
        _rank(0, "Failed", 137, at="12:01:05"),
        _rank(2, "Failed", 1, message="CUDA error: an illegal memory access", at="12:01:00"),
        _rank(1, "Failed", 137, at="12:01:06"),
    ]
    result = attempt_of(failed, pods)
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert result.error is not None and "illegal memory access" in result.error
    # a pod fails before the JobSet controller marks the JobSet: already a failure of the attempt
    assert attempt_of(_observed_jobset(manifest), pods[1:2]).outcome == "failed"
    # the trainer's bad-input exit code on any rank: permanent, not retried
    bad = [_rank(1, "Failed", contract.EXIT_BAD_INPUT, message={"error": "prompt too long"})]
    assert attempt_of(failed, bad).outcome == "permanent"


# -- the reconcile core ----------------------------------------------------------------------------


class JobSetSim(Sim):
    """The in-memory Sim with JobSets: their ranks finish one by one."""

    def __init__(self, nodes: int = 2, **run_policy: Any) -> None:
        spec = copy.deepcopy(SPEC)
        spec["stages"] = ["reward"]
        spec["dataset"]["labels"] = "data/labels.jsonl"
        spec["resources"] = {"default": {"gpus": 1}, "reward": {"nodes": nodes}}
        super().__init__(make_body(spec=spec, **run_policy))
        self.ranks: dict[str, list[PodInfo]] = {}
        self.jobset_api: bool | None = None

    def observed(self) -> Observed:
        infos = []
        for manifest in self.jobs.values():
            info = summarize_jobset(manifest)
            assert info is not None and manifest["kind"] == "JobSet"
            infos.append(info)
        return Observed(jobs=infos, pods=dict(self.ranks), claims=self.claims, jobset_api=self.jobset_api)

    def step(self) -> Plan:
        plan = super().step()
        for name in plan.delete:
            self.ranks.pop(name, None)
        return plan

    def end(self, name: str, condition: str, pods: list[PodInfo]) -> None:
        self.ranks[name] = pods
        self.jobs[name]["status"] = {
            "conditions": [{"type": condition, "status": "True", "lastTransitionTime": fmt_time(self.now)}]
        }


def test_reconcile_creates_a_jobset_and_reads_its_success() -> None:
    sim = JobSetSim(nodes=2)
    plan = sim.step()
    assert [(m["kind"], m["metadata"]["name"]) for m in plan.create] == [("JobSet", "demo-reward-1")]
    assert sim.status()["stages"]["reward"]["state"] == "Running"
    assert sim.step().create == []  # observing it changes nothing
    sim.advance(30)
    sim.end(
        "demo-reward-1", "Completed", [_rank(0, "Succeeded", message={"stage": "reward", "accuracy": 0.7})]
    )
    sim.step()
    st = sim.status()
    assert st["phase"] == "Succeeded" and st["results"]["rewardModelAccuracy"] == 0.7
    assert st["stages"]["reward"]["jobName"] == "demo-reward-1"


def test_a_failed_rank_is_one_retry_and_the_budget_counts_attempts() -> None:
    sim = JobSetSim(nodes=4, backoffLimit=1, backoffSeconds=10)
    sim.step()
    sim.advance(5)
    # all four ranks end Failed (one died, the others were stopped): one failed attempt
    pods = [_rank(i, "Failed", 1 if i == 3 else 137, at="12:00:05") for i in range(4)]
    sim.end("demo-reward-1", "Failed", pods)
    plan = sim.step()
    assert plan.create == [] and sim.status()["stages"]["reward"]["state"] == "Pending"  # backing off
    assert len(sim.events("StageFailed")) == 1
    sim.advance(10)
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-reward-2"]
    sim.advance(5)
    sim.end("demo-reward-2", "Failed", [_rank(0, "Failed", 1)])
    sim.step()
    st = sim.status()
    assert st["phase"] == "Failed" and sim.condition("Failed")["reason"] == "BackoffLimitExceeded"
    assert "failed 2 times" in sim.condition("Failed")["message"]


def test_suspend_deletes_the_jobset_and_resume_starts_a_new_attempt() -> None:
    sim = JobSetSim(nodes=2)
    sim.step()
    sim.body["spec"]["runPolicy"]["suspend"] = True
    plan = sim.step()
    assert plan.delete == ["demo-reward-1"] and sim.status()["phase"] == "Suspended"
    sim.body["spec"]["runPolicy"]["suspend"] = False
    plan = sim.step()
    assert [m["metadata"]["name"] for m in plan.create] == ["demo-reward-2"]


def test_without_the_jobset_api_the_stage_waits_with_a_condition_and_one_event() -> None:
    sim = JobSetSim(nodes=2)
    sim.jobset_api = False
    plan = sim.step()
    assert plan.create == [] and plan.requeue_after is not None
    running = sim.condition("Running")
    assert running["status"] == "False" and running["reason"] == "JobSetNotInstalled"
    assert (
        "resources.reward.nodes is 2" in running["message"]
        and "jobset.x-k8s.io/v1alpha2" in running["message"]
    )
    assert [e.type for e in plan.events if e.reason == "JobSetNotInstalled"] == ["Warning"]
    assert sim.step().events == []  # the same wait posts nothing again
    sim.jobset_api = None  # installed meanwhile (or no longer known to be missing): it starts
    assert [m["kind"] for m in sim.step().create] == ["JobSet"]


def test_single_node_jobs_never_need_the_jobset_api() -> None:
    body = make_body()
    plan = reconcile(
        body, Observed(claims=frozenset(), jobset_api=False), Sim().now, Settings(trainer_image="t")
    )
    assert [m["kind"] for m in plan.create] == ["Job"]
