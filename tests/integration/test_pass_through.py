"""Fields that the operator copies into stage Jobs: what the RLAIFJob schema accepts, the API server
accepts as a Job. A spec that would be refused as a stage Job must be refused as an RLAIFJob, with
the field named, and by ``rlaif-train validate`` (pydantic) alike; otherwise the job would be
accepted and then fail (or, before, retry forever) at its first stage.

Property test: hypothesis generates ``podTemplate`` contents (label and annotation keys and values,
node selectors, env names, tolerations, volumes and volume mounts), priority class names, images and
GPU counts from the edge cases of
Kubernetes' own rules; each RLAIFJob is sent to the real API server (server-side dry run); when it
is accepted, every stage Job the operator's builder makes of it must be accepted too (dry run).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import rlaif_api as api
from rlaif_operator.builders import Owner, build_stage_job
from rlaif_operator.settings import Settings
from tests.api_cases import base_job
from tests.cluster import Cluster, ClusterError
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    condition,
    crd_installed,
    create_job,
    job_names,
    operator,
    patch_job,
    reasons,
    rlaif_job,
    wait_phase,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures

JOBS = "/apis/rlaif.dev/v1alpha1/namespaces/{ns}/rlaifjobs"


@pytest.fixture
def crd(crd_installed: None) -> None:
    """The generated CRD, installed once per session (operator_support.crd_installed)."""


# Kubernetes' rules (apimachinery validation): a qualified name is an optional DNS-subdomain prefix
# (<= 253, lower case) and "/", then a name of <= 63 alphanumerics with -_. inside; label values are
# empty or such a name; annotation keys are qualified names compared in lower case.
PREFIXES = ["", "example.com/", "rlaif.dev/", "Example.com/", "-bad.com/", "a_b.com/", "a" * 254 + "/", "/"]
NAMES = ["app", "a", "A9", "a.b_c-d", "x" * 63, "x" * 64, "bad key!", "-x", "x-", "", "é", "a/b"]
VALUES = ["", "v", "V.1_a-b", "x" * 63, "x" * 64, "not valid!", "-x", "x_", "a/b"]
IMAGES = [
    "registry.example/rlaif-trainer:test",
    "rlaif-trainer",
    "ghcr.io/org/img@sha256:" + "a" * 64,
    "localhost:5000/a/b:v1.2",
    "rlaif trainer:1",
    "UPPER/case:1",
    "trailing:",
    " leading",
    "a:" + "t" * 129,
]
PRIORITY_CLASSES = ["high", "high-priority", "a.b", "High_Priority", "-x", "x" * 254, "system-node-critical"]
ENV_NAMES = ["FOO", "foo_bar", "a.b-c", "1ABC", "with space", "=", "a=b", "", "-x", "é"]
TOLERATION_KEYS = ["nvidia.com/gpu", "key", "bad key", "a/b/c", ""]
# Volumes and mounts (ValidateVolumes / ValidateVolumeMounts): DNS-label names, one source each,
# unique names and mount paths, mounts of existing volumes, relative subPaths without '..'; and the
# operator's own volumes (dropped from the template) and mount paths (refused).
VOLUME_NAMES = ["data", "models", "a" * 63, "a" * 64, "Data", "bad_name", "rlaif-workspace", "rlaif-dshm", ""]
VOLUME_SOURCES = [
    {"emptyDir": {}},
    {"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    {"hostPath": {"path": "/srv/data", "type": "DirectoryOrCreate"}},
    {"hostPath": {}},
    {"hostPath": {"path": "/srv", "type": "Folder"}},
    {"persistentVolumeClaim": {"claimName": "model-store", "readOnly": True}},
    {"persistentVolumeClaim": {"claimName": "Model_Store"}},
    {"configMap": {"name": "settings"}},
    {"downwardAPI": {"items": []}},
    {},
    {"emptyDir": {}, "hostPath": {"path": "/srv"}},
    {"emptydir": {}},
]
MOUNT_PATHS = ["/data", "/models", "/dev/shm", "/workspace", "/etc/rlaif", "relative", "/data"]
SUB_PATHS = [None, "", "a/b", "../x", "a/../b", "/abs", "a..b"]


keys = st.builds(lambda p, n: p + n, st.sampled_from(PREFIXES), st.sampled_from(NAMES))
string_maps = st.dictionaries(keys, st.sampled_from(VALUES), max_size=3)
pod_templates = st.fixed_dictionaries(
    {},
    optional={
        "labels": string_maps,
        "annotations": st.dictionaries(keys, st.text(max_size=20), max_size=3),
        "nodeSelector": string_maps,
        "env": st.lists(
            st.builds(lambda n: {"name": n, "value": "1"}, st.sampled_from(ENV_NAMES)),
            max_size=2,
            unique_by=lambda e: e["name"],
        ),
        "tolerations": st.lists(
            st.builds(
                lambda k, op: {"key": k, "operator": op, "effect": "NoSchedule"},
                st.sampled_from(TOLERATION_KEYS),
                st.sampled_from(["Exists", "Equal"]),
            ),
            max_size=2,
        ),
        "volumes": st.lists(
            st.builds(
                lambda n, src: {"name": n, **src},
                st.sampled_from(VOLUME_NAMES),
                st.sampled_from(VOLUME_SOURCES),
            ),
            max_size=3,
        ),
        "volumeMounts": st.lists(
            st.builds(
                lambda n, path, sub: {
                    "name": n,
                    "mountPath": path,
                    **({} if sub is None else {"subPath": sub}),
                },
                st.sampled_from([*VOLUME_NAMES[:3], "missing"]),
                st.sampled_from(MOUNT_PATHS),
                st.sampled_from(SUB_PATHS),
            ),
            max_size=3,
        ),
    },
)
specs = st.fixed_dictionaries(
    {"podTemplate": pod_templates},
    optional={
        "image": st.sampled_from(IMAGES),
        "priorityClassName": st.sampled_from(PRIORITY_CLASSES),
        "gpus": st.sampled_from([1, 2]),  # 2: the operator adds its own /dev/shm
    },
)


def _manifest(namespace: str, choice: dict[str, Any]) -> dict[str, Any]:
    job = base_job("pass-through")
    job["metadata"]["namespace"] = namespace
    job["spec"]["podTemplate"] = copy.deepcopy(choice["podTemplate"])
    if "image" in choice:
        job["spec"]["image"] = choice["image"]
    if "priorityClassName" in choice:
        job["spec"]["runPolicy"] = {"priorityClassName": choice["priorityClassName"]}
    if "gpus" in choice:
        job["spec"]["resources"] = {"default": {"gpus": choice["gpus"]}}
    return job


def _server_accepts(cluster: Cluster, path: str, body: dict[str, Any]) -> tuple[bool, str]:
    try:
        cluster.request("POST", path + "?dryRun=All&fieldValidation=Strict", body)
        return True, ""
    except ClusterError as err:
        return False, str(err)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=specs)
def test_an_accepted_spec_makes_stage_jobs_the_api_server_accepts(
    cluster: Cluster, crd: None, namespace: str, choice: dict[str, Any]
) -> None:
    manifest = _manifest(namespace, choice)
    accepted, detail = _server_accepts(cluster, JOBS.format(ns=namespace), manifest)
    try:
        job = api.RLAIFJob.model_validate(manifest)
        pydantic_ok, pydantic_detail = True, ""
    except ValidationError as err:
        job, pydantic_ok, pydantic_detail = None, False, str(err)
    assert accepted == pydantic_ok, (
        f"API server {accepted} ({detail}), pydantic {pydantic_ok} ({pydantic_detail})"
    )
    if not accepted:
        return
    assert job is not None
    owner = Owner(name="pass-through", namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    image = job.spec.image or "registry.example/rlaif-trainer:test"
    for stage in job.spec.stages:
        body = build_stage_job(job, owner, stage, 1, Settings(), image)
        ok, why = _server_accepts(cluster, f"/apis/batch/v1/namespaces/{namespace}/jobs", body)
        assert ok, f"the RLAIFJob was accepted, its {stage} Job refused: {why}\n{yaml.safe_dump(choice)}"


@pytest.mark.parametrize(
    ("choice", "field"),
    [
        ({"podTemplate": {}, "priorityClassName": "High_Priority"}, "priorityClassName"),
        ({"podTemplate": {"labels": {"bad key!": "x"}}}, "labels"),
        ({"podTemplate": {"labels": {"app": "x" * 64}}}, "labels"),
        ({"podTemplate": {"annotations": {"-bad.com/x": "1"}}}, "annotations"),
        ({"podTemplate": {"nodeSelector": {"a": "not valid!"}}}, "nodeSelector"),
        ({"podTemplate": {}, "image": "rlaif trainer:1"}, "image"),
        ({"podTemplate": {"env": [{"name": "a=b", "value": "1"}]}}, "env"),
        ({"podTemplate": {"volumes": [{"name": "extra", "hostPath": {}}]}}, "hostPath.path"),
        ({"podTemplate": {"volumeMounts": [{"name": "extra", "mountPath": "/x"}]}}, "volumeMounts"),
        (
            {
                "podTemplate": {
                    "volumes": [{"name": "extra", "emptyDir": {}}],
                    "volumeMounts": [{"name": "extra", "mountPath": "/workspace"}],
                }
            },
            "mountPath",
        ),
    ],
)
def test_a_spec_the_stage_job_would_fail_on_is_refused_naming_the_field(
    cluster: Cluster, crd: None, namespace: str, choice: dict[str, Any], field: str
) -> None:
    accepted, detail = _server_accepts(cluster, JOBS.format(ns=namespace), _manifest(namespace, choice))
    assert not accepted and field in detail, detail
    with pytest.raises(ValidationError, match=field):
        api.RLAIFJob.model_validate(_manifest(namespace, choice))


def test_gpus_as_a_string_is_refused_by_both_validators(cluster: Cluster, crd: None, namespace: str) -> None:
    manifest = base_job("string-gpus")
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"] = {"default": {"gpus": "1"}}
    accepted, detail = _server_accepts(cluster, JOBS.format(ns=namespace), manifest)
    assert not accepted and "gpus" in detail, detail
    with pytest.raises(ValidationError, match="gpus"):
        api.RLAIFJob.model_validate(manifest)


def test_a_stage_job_the_api_server_finds_invalid_fails_the_job_at_once(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """What the schema cannot check (most volume sources are passed through as they are) and the API
    server refuses as invalid (HTTP 422) would be refused every time: the job fails with
    StageJobInvalid after the first try, naming the field, and is tried again once the spec changes."""
    bind_claim(cluster, namespace, "workspace")
    manifest = rlaif_job("bad-volume", namespace)
    manifest["spec"]["podTemplate"]["volumes"] = [{"name": "extra", "secret": {}}]  # no secretName
    create_job(cluster, manifest)
    st = wait_phase(cluster, namespace, "bad-volume", "Failed", timeout=30)
    failed = condition(st, "Failed")
    assert failed["reason"] == "StageJobInvalid" and "secret.secretName" in failed["message"], failed
    assert job_names(cluster, namespace, "bad-volume") == []
    time.sleep(6)  # past the 5 s refusal backoff: no retry of the same spec
    assert reasons(cluster, namespace, "bad-volume").count("StageJobInvalid") == 1
    assert "StageStarted" not in reasons(cluster, namespace, "bad-volume")
    assert operator.metric("rlaif_jobs", phase="Failed") == 1

    patch_job(
        cluster,
        namespace,
        "bad-volume",
        {"spec": {"podTemplate": {"volumes": [{"name": "extra", "emptyDir": {}}]}}},
    )
    wait_phase(cluster, namespace, "bad-volume", "Succeeded", timeout=120)
