"""The label stage through an operator-run labeler server, on the real test node.

``labeler.server`` with ``engine: rlaif``: the operator (the chart's, from the Dockerfile's image)
runs ``rlaif-train serve`` from the trainer image, the embedded model baked in, as a Deployment and
a Service; the label stage's openai labeler calls it at ``http://<job>-labeler:8000/v1`` through
cluster DNS (CoreDNS) and the Service (kube-proxy), over the pod network. When no stage needs it any
more the server is deleted. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.cluster.node import NODE_NAME

from .realnode import (
    PSS_RESTRICTED,
    Operator,
    Watcher,
    create_namespace,
    fast_quickstart,
    kubectl_apply_file,
    local_workspace,
    sole_operator,
    stage_inputs,
    unique,
    wait_for,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
SERVER = "rlaif.dev/component%3Dlabeler-server"


@pytest.fixture(scope="module")
def served_operator(node_cluster: Cluster) -> tuple[Operator, str]:
    ns = unique("served")
    create_namespace(node_cluster, ns, PSS_RESTRICTED)
    return sole_operator(node_cluster, [ns], release="rlaif-served"), ns


def _server_pods(c: Cluster, ns: str) -> list[dict[str, Any]]:
    return list((c.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={SERVER}") or {"items": []})["items"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(cs.get("ready") for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def test_the_label_stage_calls_the_served_labeler_through_its_service(
    node_cluster: Cluster, served_operator: tuple[Operator, str]
) -> None:
    c = node_cluster
    _, ns = served_operator
    workspace: Path = local_workspace(c, ns)
    stage_inputs(workspace)
    job = fast_quickstart("served", "workspace", stages=["label"])
    job["spec"]["labeler"] = {
        "provider": "openai",
        "model": "smollm2",
        "mode": "pointwise",
        "principles": ["Does the summary state the main point of the post?"],
        "maxConcurrency": 4,
        "maxRetries": 2,
        "server": {
            "engine": "rlaif",
            "model": "embedded:smollm2-135m-instruct",
            "resources": {"memory": "2Gi"},
            "readyTimeoutSeconds": 600,
        },
    }
    kubectl_apply_file(c, ns, job)
    watcher = Watcher(c, ns)

    seen: dict[str, Any] = {}

    def ready_server() -> bool:
        ready = [p for p in _server_pods(c, ns) if _ready(p)]
        if ready:
            seen["pod"] = ready[0]
        return bool(ready)

    wait_for(c, watcher, "a ready labeler server pod", ready_server, timeout=600)
    pod = seen["pod"]
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["spec"]["containers"][0]["image"] == c.node.loaded["trainer"].name  # type: ignore[union-attr]
    assert pod["spec"]["containers"][0]["command"][:3] == [
        "rlaif-train",
        "serve",
        "embedded:smollm2-135m-instruct",
    ]

    final = wait_for_phase(c, ns, "served", {"Succeeded", "Failed"}, watcher, timeout=900)
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    (label_pod,) = watcher.by_stage("label")
    assert label_pod.exit_code == 0 and label_pod.node == NODE_NAME

    # The labels came from the served model: 4 pairs, each a soft label from real log-odds.
    root = workspace / ns / "served"
    labels = [json.loads(line) for line in next(root.glob("**/labels.jsonl")).read_text().splitlines()]
    assert len(labels) == 4 and all(0.0 < row["p_a"] < 1.0 for row in labels), labels
    reasons = {x["reason"] for x in (c.get(f"/api/v1/namespaces/{ns}/events") or {"items": []})["items"]}
    assert {"LabelerServerStarting", "LabelerServerReady"} <= reasons, reasons

    # Nothing needs the server once the job is done: it goes.
    wait_for(c, watcher, "the server removed", lambda: not _server_pods(c, ns), timeout=180)
    deployments = (c.get(f"/apis/apps/v1/namespaces/{ns}/deployments") or {"items": []})["items"]
    assert deployments == [], deployments
