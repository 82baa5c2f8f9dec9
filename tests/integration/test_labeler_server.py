"""labeler.server against the real control plane (kwok runs the server's pods, the real deployment
controller their ReplicaSet): the operator, with exactly its RBAC rules, creates the Deployment and
Service for the stage that asks the labeler, starts that stage once a server pod is ready, removes
the server when the next stage does not need it, and fails a job whose server never gets ready
with the scheduler's reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlaif_operator.rbac import RBAC_RULES
from tests.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    condition,
    crd_installed,
    create_job,
    reasons,
    rlaif_job,
    service_account_kubeconfig,
    stage_jobs,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed"]  # fixture


def served_job(name: str, namespace: str, server: dict[str, Any]) -> dict[str, Any]:
    job = rlaif_job(name, namespace, stages=["label", "reward"])
    job["spec"]["labeler"] = {
        "provider": "openai",
        "model": "judge",
        "mode": "pointwise",
        "principles": ["Is the answer helpful?"],
        "server": server,
    }
    return job


def server_objects(cluster: Cluster, namespace: str) -> list[str]:
    deployments = cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    services = cluster.request("GET", f"/api/v1/namespaces/{namespace}/services")["items"]
    return sorted(
        f"{kind}/{o['metadata']['name']}"
        for kind, objs in (("deployment", deployments), ("service", services))
        for o in objs
        if not o["metadata"].get("deletionTimestamp")
    )


@pytest.fixture
def least_privilege_operator(cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path) -> Any:
    kubeconfig = service_account_kubeconfig(cluster, namespace, RBAC_RULES, tmp_path / "sa.kubeconfig")
    op = OperatorProcess(cluster, namespace, tmp_path, kubeconfig=kubeconfig)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        assert "Traceback" not in op.logs(), op.logs()
        assert "Forbidden" not in op.logs() and " 403" not in op.logs(), op.logs()


def test_the_server_serves_the_stage_that_asks_the_labeler_and_goes_after_it(
    cluster: Cluster, namespace: str, least_privilege_operator: OperatorProcess
) -> None:
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    bind_claim(cluster, namespace, "workspace")
    create_job(cluster, served_job("served", namespace, {"model": "org/judge-7b"}))

    # The Deployment and Service come first; the label Job only once a server pod is ready.
    wait_until(
        "the server's Deployment and Service",
        lambda: server_objects(cluster, namespace) == ["deployment/served-labeler", "service/served-labeler"],
        timeout=60,
    )
    st = wait_phase(cluster, namespace, "served", "Succeeded", timeout=120)
    got = reasons(cluster, namespace, "served")
    # It waited for the server, then ran (that no Job starts before: tests/unit/operator/test_labeler_server.py)
    assert "LabelerServerStarting" in got and "LabelerServerReady" in got
    assert "LabelerServerNotNeeded" in got  # the reward stage does not ask the labeler
    assert condition(st, "LabelerServerReady")["reason"] == "LabelerServerNotNeeded"
    assert "labelerServer" not in st

    label = next(
        j for j in stage_jobs(cluster, namespace, "served") if j["metadata"]["name"] == "served-label-1"
    )
    # The label stage calls the Service (its config is in the job's ConfigMap).
    cm = cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/served-config")
    assert (
        json.loads(cm["data"]["label.json"])["spec"]["labeler"]["endpoint"] == "http://served-labeler:8000/v1"
    )
    assert label["metadata"]["ownerReferences"][0]["kind"] == "RLAIFJob"
    wait_until("the server is removed", lambda: server_objects(cluster, namespace) == [], timeout=60)


def test_a_server_that_is_never_ready_fails_the_job_with_the_pods_state(
    cluster: Cluster, namespace: str, least_privilege_operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    # No kwok node has 64 GPUs: the server pod stays unschedulable.
    server = {"model": "org/judge-70b", "resources": {"gpus": 64}, "readyTimeoutSeconds": 10}
    create_job(cluster, served_job("unserved", namespace, server))
    st = wait_phase(cluster, namespace, "unserved", "Failed", timeout=90)
    failed = condition(st, "Failed")
    assert failed["reason"] == "LabelerServerNotReady"
    assert "readyTimeoutSeconds (10s)" in failed["message"] and "Unschedulable" in failed["message"]
    assert stage_jobs(cluster, namespace, "unserved") == []  # no stage ran without its server
    wait_until("the server is removed", lambda: server_objects(cluster, namespace) == [], timeout=60)
