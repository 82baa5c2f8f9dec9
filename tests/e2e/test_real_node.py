"""The quickstart RLAIFJob end to end on the real test node (tests/cluster/node.py).

The operator runs as a pod, installed with the Helm chart from the image built from the Dockerfile
(``operator`` target), under the chart's ServiceAccount and RBAC; it reaches the API server through
the ``kubernetes`` Service (kube-proxy). The job is a smaller quickstart (same four stages, embedded
model, fewer pairs and steps) applied with ``kubectl apply -f`` in a namespace that enforces the
``restricted`` Pod Security Standard; each stage runs ``rlaif-train`` in the ``trainer`` image on
the real node with a local PersistentVolume as its workspace. Nothing is mocked.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from tests.cluster import Cluster
from tests.cluster.node import NODE_NAME

from .realnode import (
    PSS_RESTRICTED,
    RESULT_FIELDS,
    Watcher,
    create_namespace,
    fast_quickstart,
    install_operator,
    kubectl_apply_file,
    local_workspace,
    scrape,
    seconds_between,
    stage_inputs,
    unique,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

STAGES = ("label", "reward", "rl", "evaluate")


def test_quickstart_runs_end_to_end_on_the_real_node(node_cluster: Cluster) -> None:
    c = node_cluster
    ns = unique("quickstart")
    create_namespace(c, ns, PSS_RESTRICTED)
    operator = install_operator(c, [ns])
    (op_pod,) = operator.pods(c)
    assert op_pod["spec"]["nodeName"] == NODE_NAME
    assert op_pod["spec"]["serviceAccountName"] == operator.fullname
    assert op_pod["spec"]["containers"][0]["image"] == c.node.loaded["operator"].name  # type: ignore[union-attr]

    workspace = local_workspace(c, ns)
    stage_inputs(workspace)
    job = fast_quickstart("quickstart", "workspace")
    t0 = time.monotonic()
    kubectl_apply_file(c, ns, job)
    watcher = Watcher(c, ns)
    final = wait_for_phase(c, ns, "quickstart", {"Succeeded", "Failed"}, watcher, timeout=2000)
    wall = time.monotonic() - t0
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    # Every stage ran once, in the trainer image, on the real node, and exited 0.
    timings: dict[str, float] = {}
    for stage in STAGES:
        pods = watcher.by_stage(stage)
        assert [p.exit_code for p in pods] == [0], f"{stage}: {pods}"
        (pod,) = pods
        assert pod.node == NODE_NAME
        assert pod.image == c.node.loaded["trainer"].name  # type: ignore[union-attr]
        timings[stage] = seconds_between(pod.started, pod.finished)

    # status.results holds what the pods' termination messages said, key by key.
    results = status["results"]
    for stage, fields in RESULT_FIELDS.items():
        summary = watcher.summary(stage)
        for key, field in fields.items():
            assert key in summary, f"{stage} summary lacks {key}: {summary}"
            assert field in results, f"status.results lacks {field} ({stage}.{key}): {results}"
            assert math.isclose(results[field], summary[key], rel_tol=1e-6, abs_tol=1e-9), (stage, key)
    assert results["winRateCiLow"] <= results["winRateVsInitial"] <= results["winRateCiHigh"]

    # kubectl get rlaif -o wide: every column filled.
    table = c.kubectl("get", "rlaif", "-n", ns, "-o", "wide").stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert len(row) == len(header) and "<none>" not in row, "\n".join(table)
    assert row[header.index("PHASE")] == "Succeeded"

    # Events about the job, from the operator.
    events = c.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.kind%3DRLAIFJob") or {}
    reasons = [e["reason"] for e in events.get("items", [])]
    assert len(reasons) >= len(STAGES), reasons

    # The artifacts are on the volume, each stage's marked done.
    root = workspace / ns / "quickstart"
    for artifact in ("labels", "reward_model", "policy", "eval"):
        assert (root / artifact / "DONE").exists(), sorted(
            str(p.relative_to(workspace)) for p in root.rglob("*")
        )

    # Metrics: a stage pod's trainer port, scraped while it ran, and the operator's /metrics.
    scraped = [p for p in watcher.pods.values() if p.metrics]
    assert scraped and any("rlaif_trainer_" in (p.metrics or "") for p in scraped), watcher.pods
    op_ip = operator.pods(c)[0]["status"]["podIP"]
    op_metrics = scrape(f"http://{op_ip}:8080/metrics") or ""
    assert "rlaif_reconcile_total" in op_metrics

    report = {
        "wall_s": round(wall, 1),
        "stage_s": timings,
        "results": results,
        "events": sorted(set(reasons)),
    }
    print("\n[e2e] quickstart on the real node:", json.dumps(report))
    out = os.environ.get("RLAIF_E2E_REPORT")
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(report) + "\n")
