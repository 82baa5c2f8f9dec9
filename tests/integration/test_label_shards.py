"""Sharded labeling on the real control plane: the label stage as an Indexed Job on kwok nodes.

The kube-controller-manager's real Job controller runs the Indexed Job (completion indexes,
``JOB_COMPLETION_INDEX``); kwok plays the pods, each index with its own run time, exit code and
termination message (tests/cluster/stages.yaml), as the trainer's shards would report them.
"""

from __future__ import annotations

import json

import pytest

from tests.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    crd_installed,
    create_job,
    operator,
    pods_of,
    rlaif_job,
    stage_jobs,
    wait_phase,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed", "operator"]  # fixtures

SHARD = {"stage": "label", "pairs": 7, "consistency_rate": 0.5, "shards": 3}
MERGED = {"stage": "label", "pairs": 21, "consistency_rate": 0.81, "labelled_now": 21, "shards": 3}


def _sharded(name: str, namespace: str, shards: int, annotations: dict[str, str], **run_policy) -> dict:
    manifest = rlaif_job(name, namespace, stages=["label"], **run_policy)
    manifest["spec"]["resources"] = {"default": {"gpus": 1}, "label": {"shards": shards}}
    manifest["spec"]["podTemplate"]["annotations"].update(annotations)
    return manifest


def test_sharded_label_stage_runs_as_an_indexed_job_and_reports_the_merge(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bind_claim(cluster, namespace, "workspace")
    annotations = {
        # shard 2 finishes last and merges; 0 and 1 report their shard only
        "rlaif.dev/test-run-seconds-0": "0.5",
        "rlaif.dev/test-run-seconds-1": "1",
        "rlaif.dev/test-run-seconds-2": "3",
        "rlaif.dev/test-termination-message-0": json.dumps({**SHARD, "shard": 0}),
        "rlaif.dev/test-termination-message-1": json.dumps({**SHARD, "shard": 1}),
        "rlaif.dev/test-termination-message-2": json.dumps(MERGED),
    }
    create_job(cluster, _sharded("shards", namespace, 3, annotations))
    st = wait_phase(cluster, namespace, "shards", "Succeeded", timeout=90)

    (job,) = stage_jobs(cluster, namespace, "shards")
    spec = job["spec"]
    assert job["metadata"]["name"] == "shards-label-1"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        3,
        3,
        0,
    )
    pods = pods_of(cluster, namespace, "shards-label-1")
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1", "2"]  # one pod per shard, each labelled with its index
    for pod in pods:  # the Job controller gives each pod its shard; the trainer reads it
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert "JOB_COMPLETION_INDEX" in env
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    label = st["stages"]["label"]
    assert label["state"] == "Succeeded" and label["attempts"] == 1
    assert label["metrics"] == {k: v for k, v in MERGED.items() if k != "stage"}  # the whole stage's summary
    assert st["results"]["labelerPositionConsistency"] == 0.81


def test_failed_shards_fail_the_attempt_once(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Two of three shards fail in every attempt: each attempt counts once against backoffLimit."""
    bind_claim(cluster, namespace, "workspace")
    annotations = {
        "rlaif.dev/test-exit-code-0": "1",
        "rlaif.dev/test-exit-code-2": "1",
        "rlaif.dev/test-run-seconds-1": "20",
        "rlaif.dev/test-termination-message-0": json.dumps({"stage": "label", "error": "shard 0 died"}),
        "rlaif.dev/test-termination-message-2": json.dumps({"stage": "label", "error": "shard 2 died"}),
    }
    create_job(cluster, _sharded("sfail", namespace, 3, annotations, backoffLimit=1))
    st = wait_phase(cluster, namespace, "sfail", "Failed", timeout=90)
    label = st["stages"]["label"]
    assert label["attempts"] == 2, label  # two attempts of three pods each, not four or six failures
    assert "failed 2 times, more than backoffLimit 1" in label["message"]
    assert "died" in label["message"]
    assert sorted(j["metadata"]["name"] for j in stage_jobs(cluster, namespace, "sfail")) == [
        "sfail-label-1",
        "sfail-label-2",
    ]
