"""The generated CRD on a real kube-apiserver: examples accepted, bad specs rejected with the field
named, immutability after start, printer columns, ``kubectl explain``, and agreement between the
API server and the pydantic models on random specs."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import rlaif_api as api
from tests.api_cases import INVALID_CASES, base_job, example_jobs
from tests.cluster import Cluster, ClusterError
from tests.integration.operator_support import crd_installed

pytestmark = pytest.mark.integration

__all__ = ["crd_installed"]  # a fixture, imported so that pytest finds it
JOBS = "/apis/rlaif.dev/v1alpha1/namespaces/{ns}/rlaifjobs"


@pytest.fixture(scope="module")
def crd(crd_installed: None) -> None:
    """The CRD, applied and polled until served: a `kubectl wait` right after the apply can fail
    with kubectl's "<nil> is of the type <nil>" before the CRD has any status."""


def _apply(cluster: Cluster, namespace: str, job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    job = copy.deepcopy(job)
    job.setdefault("metadata", {})["namespace"] = namespace
    return cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(job), check=False)


def test_every_example_is_accepted(cluster: Cluster, crd: None, namespace: str) -> None:
    for name, job in example_jobs().items():
        result = _apply(cluster, namespace, job)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    listed = cluster.get(JOBS.format(ns=namespace))
    assert len(listed["items"]) == len(example_jobs())
    # The API server filled the paper's defaults in.
    minimal = next(i for i in listed["items"] if i["metadata"]["name"] == "minimal")
    assert minimal["spec"]["rl"]["klCoef"] == 0.05
    assert minimal["spec"]["rl"]["temperature"] == 0.9
    assert minimal["spec"]["labeler"]["positionDebias"] is True
    assert minimal["spec"]["stages"] == ["label", "reward", "rl", "evaluate"]


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.name)
def test_invalid_spec_is_rejected_naming_the_field(cluster: Cluster, crd: None, namespace: str, case) -> None:
    result = _apply(cluster, namespace, case.job())
    assert result.returncode != 0, f"{case.name} was accepted"
    assert case.field in result.stderr, result.stderr
    assert cluster.get(f"{JOBS.format(ns=namespace)}/invalid-{case.name}") is None


def _set_status(cluster: Cluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    cluster.request("PATCH", f"{JOBS.format(ns=namespace)}/{name}/status", {"status": status})


def test_spec_is_immutable_after_start_except_suspend_and_ttl(
    cluster: Cluster, crd: None, namespace: str
) -> None:
    assert _apply(cluster, namespace, base_job("immutable")).returncode == 0
    path = f"{JOBS.format(ns=namespace)}/immutable"
    # Before start, the spec may change.
    cluster.request("PATCH", path, {"spec": {"rl": {"klCoef": 0.1}}})
    _set_status(cluster, namespace, "immutable", {"startTime": "2026-01-01T00:00:00Z", "phase": "Labeling"})
    with pytest.raises(ClusterError) as info:
        cluster.request("PATCH", path, {"spec": {"rl": {"klCoef": 0.2}}})
    assert "immutable once the job has started" in str(info.value)
    assert "spec" in str(info.value)
    with pytest.raises(ClusterError, match="immutable"):
        cluster.request("PATCH", path, {"spec": {"runPolicy": {"backoffLimit": 5}}})
    cluster.request("PATCH", path, {"spec": {"runPolicy": {"suspend": True, "ttlSecondsAfterFinished": 30}}})
    job = cluster.get(path)
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["spec"]["rl"]["klCoef"] == 0.1


def test_printer_columns_and_explain(cluster: Cluster, crd: None, namespace: str) -> None:
    assert _apply(cluster, namespace, base_job("columns")).returncode == 0
    _set_status(
        cluster,
        namespace,
        "columns",
        {
            "phase": "Evaluating",
            "currentStage": "evaluate",
            "progress": "3/4",
            "progressPercentage": 40,
            "results": {"winRateVsInitial": 0.625},
        },
    )
    table = cluster.kubectl("get", "rlaif", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGE", "PROGRESS", "STAGE-%", "WIN-RATE", "AGE"]
    assert row.split()[:6] == ["columns", "Evaluating", "evaluate", "3/4", "40", "0.625"]
    explained = cluster.kubectl("explain", "rlaifjob.spec.labeler").stdout
    assert "position bias" in explained
    assert "principles" in explained and "yes/no" in explained
    assert "RLAIFJob aligns a language model" in cluster.kubectl("explain", "rlaifjob").stdout


# ---------------------------------------------------------------- pydantic and the API server agree

MUTATIONS: dict[str, list[Any]] = {
    "spec.rl.algorithm": ["reinforce", "rloo", "grpo", "ppo", "dpo"],
    "spec.rl.reward": ["rewardModel", "direct", "model"],
    "spec.rl.klCoef": [0, 0.05, 3, -1, 11],
    "spec.rl.temperature": [0.9, 0, 2.5, 6],
    "spec.rl.samplesPerPrompt": [1, 2, 4, 0],
    "spec.labeler.provider": ["hf", "openai", "python", "anthropic"],
    "spec.labeler.mode": ["pairwise", "pointwise", "listwise"],
    "spec.labeler.principles": [[], ["Is it kind?"]],
    "spec.labeler.endpoint": ["http://vllm:8000/v1", "vllm:8000"],
    "spec.labeler.callable": ["pkg.mod:fn", "not a callable"],
    "spec.labeler.model": ["served-model"],
    "spec.stages": [
        ["label"],
        ["rl"],
        ["reward", "rl"],
        ["label", "reward", "rl", "evaluate"],
        ["rl", "label"],
        [],
    ],
    "spec.dataset.labels": ["labels.jsonl"],
    "spec.rewardModel.path": ["/models/rm"],
    "spec.evaluation.policy": ["/models/policy"],
    "spec.resources.default.gpus": [0, 2, -1, 65],
    "spec.resources.default.memory": ["16Gi", "500m", "16GB", 8],
    "spec.storage.size": ["10Gi", "ten"],
    "spec.storage.persistentVolumeClaim": [{"claimName": "data"}, {"claimName": "Bad_Name"}],
    "spec.runPolicy.backoffLimit": [0, 3, -2],
}


def _mutated(choices: dict[str, Any]) -> dict[str, Any]:
    job = base_job("agree")
    for path, value in choices.items():
        *parents, leaf = path.split(".")
        node = job
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
    return job


_random_choices = st.dictionaries(
    st.sampled_from(sorted(MUTATIONS)), st.none(), min_size=1, max_size=4
).flatmap(lambda keys: st.fixed_dictionaries({k: st.sampled_from(MUTATIONS[k]) for k in keys}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choices=_random_choices)
def test_pydantic_and_api_server_agree_on_random_specs(
    cluster: Cluster, crd: None, namespace: str, choices
) -> None:
    job = _mutated(choices)
    try:
        api.RLAIFJob.model_validate(job)
        pydantic_ok = True
    except ValidationError:
        pydantic_ok = False
    body = copy.deepcopy(job)
    body["metadata"]["namespace"] = namespace
    try:
        cluster.request("POST", JOBS.format(ns=namespace) + "?dryRun=All&fieldValidation=Strict", body)
        server_ok, detail = True, ""
    except ClusterError as err:
        server_ok, detail = False, str(err)
    assert pydantic_ok == server_ok, f"pydantic {pydantic_ok}, API server {server_ok} for {choices}: {detail}"
