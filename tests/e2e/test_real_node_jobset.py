"""A multi-node reward stage on the real test node: a 2-pod JobSet, for real.

The real JobSet controller (tests/cluster/jobset.py) runs beside the real node; the operator is the
chart's, from the Dockerfile's image, installed after JobSet so that it finds the API at start-up.
The RLAIFJob asks for ``resources.reward.nodes: 2`` on CPU: two pods, each one ``accelerate launch``
agent (rank = its completion index), rendezvous at rank 0's JobSet hostname through cluster DNS
(CoreDNS, the JobSet's headless Service), one gloo process group across the two pods over the pod
network. Nothing is mocked.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.cluster import Cluster
from tests.cluster.jobset import API as JOBSET_API
from tests.cluster.jobset import JobSet
from tests.cluster.node import NODE_NAME

from .realnode import (
    PSS_RESTRICTED,
    Operator,
    Watcher,
    create_namespace,
    fast_quickstart,
    kubectl_apply_file,
    local_workspace,
    put_file,
    sole_operator,
    unique,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def _labels(n: int = 16) -> str:
    """``n`` labelled pairs (the reward stage's input): the quickstart's prompts, a longer and a
    shorter answer, the longer preferred, so the reward model has something to learn."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        short = "It is fine."
        long = "A clear one-sentence summary that names the main point of the post." + " Yes." * rng.randint(
            0, 3
        )
        a_first = i % 2 == 0
        rows.append(
            {
                "id": f"pair-{i:03d}",
                "prompt": f"Summarize post {i} in one sentence.",
                "response_a": long if a_first else short,
                "response_b": short if a_first else long,
                "p_a": 0.9 if a_first else 0.1,
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def jobset_operator(node_cluster: Cluster) -> tuple[JobSet, Operator, str]:
    """JobSet first, then the operator. Operators left by other modules watch every namespace and
    started before JobSet was installed (they would hold this job as JobSetNotInstalled), so they
    are uninstalled first."""
    c = node_cluster
    js = JobSet(c).start()
    ns = unique("jobset")
    create_namespace(c, ns, PSS_RESTRICTED)
    return js, sole_operator(c, [ns], release="rlaif-jobset"), ns


def test_a_two_node_reward_stage_trains_across_two_pods(node_cluster: Cluster, jobset_operator) -> None:
    c = node_cluster
    _, _, ns = jobset_operator
    workspace = local_workspace(c, ns)
    put_file(workspace, "data/labels.jsonl", _labels())
    job = fast_quickstart("mnreward", "workspace", stages=["reward"])
    job["spec"]["dataset"]["labels"] = "data/labels.jsonl"
    job["spec"]["resources"] = {"default": {"gpus": 0, "memory": "3Gi"}, "reward": {"nodes": 2}}
    kubectl_apply_file(c, ns, job)
    watcher = Watcher(c, ns)
    final = wait_for_phase(c, ns, "mnreward", {"Succeeded", "Failed"}, watcher, timeout=900)
    status = final["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    # One JobSet of two pods, both on the real node, each with its own pod IP, both exited 0.
    (js,) = (c.get(f"{JOBSET_API}/namespaces/{ns}/jobsets") or {"items": []})["items"]
    assert js["metadata"]["name"] == "mnreward-reward-1"
    assert js["status"]["terminalState"] == "Completed"
    pods = watcher.by_stage("reward")
    assert len(pods) == 2, pods
    assert [p.exit_code for p in pods] == [0, 0], pods
    assert all(p.node == NODE_NAME for p in pods)
    assert len({p.ip for p in pods}) == 2, pods  # two pods, two addresses: the group spans the network

    # The reward model was trained by one process group of two ranks (the summary is rank 0's).
    reward = status["stages"]["reward"]
    assert reward["attempts"] == 1 and reward["jobName"] == "mnreward-reward-1"
    assert reward["metrics"]["processes"] == 2, reward["metrics"]
    assert reward["metrics"]["train_pairs"] + reward["metrics"]["eval_pairs"] == 16
    assert "rewardModelAccuracy" in status["results"]
    seconds = [p for p in pods if p.started and p.finished]
    print(f"\n[e2e] 2-node reward stage: {len(seconds)} pods, metrics {reward['metrics']}")
