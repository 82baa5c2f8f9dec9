"""Sharded labeling on the operator's side: the Indexed Job the builder makes, and how an attempt's
outcome and summary are read from several pods (rlaif_operator.builders, rlaif_operator.observe)."""

from __future__ import annotations

import json
from typing import Any

from rlaif_operator.observe import PodInfo, attempt_of, summarize_job
from tests.unit.operator.test_builders import stage_job


def _resources(shards: int) -> dict[str, Any]:
    return {"default": {"gpus": 1}, "label": {"shards": shards}}


def test_shards_make_the_label_stage_an_indexed_job_and_nothing_else() -> None:
    manifest = stage_job("label", resources=_resources(3))
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 0  # one failed shard fails the attempt; the operator retries
    # each pod gets the stage's resources: shards multiply pods, not a pod's GPUs
    limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    one = stage_job("label", resources=_resources(1))["spec"]
    assert "completionMode" not in one and (one["completions"], one["parallelism"]) == (1, 1)
    for stage in ("reward", "rl", "evaluate"):  # label.shards is the label stage's only
        other = stage_job(stage, resources=_resources(3))["spec"]
        assert "completionMode" not in other and other["completions"] == 1
    assert summarize_job(manifest) is not None and summarize_job(manifest).completions == 3  # type: ignore[union-attr]


def _pod(i: int, phase: str, message: dict[str, Any] | None = None, exit_code: int | None = None) -> PodInfo:
    return PodInfo(
        name=f"demo-label-1-{i}-x",
        job_name="demo-label-1",
        phase=phase,
        exit_code=exit_code if exit_code is not None else (0 if phase == "Succeeded" else None),
        message=json.dumps(message) if message is not None else None,
        finished_at="2026-01-01T00:01:00Z" if phase in ("Succeeded", "Failed") else None,
    )


def test_an_attempt_of_a_sharded_job_speaks_through_the_merging_pod() -> None:
    manifest = stage_job("label", resources=_resources(3))
    manifest["metadata"]["ownerReferences"][0]["uid"] = "u"
    job = summarize_job(manifest)
    assert job is not None
    shard = {"stage": "label", "pairs": 7, "shard": 0, "shards": 3}
    merged = {"stage": "label", "pairs": 21, "shards": 3, "consistency_rate": 0.9}
    # one shard done, two running: the stage is not done
    assert (
        attempt_of(job, [_pod(0, "Succeeded", shard), _pod(1, "Running"), _pod(2, "Running")]).outcome
        == "active"
    )
    # the last one merged: succeeded, with the merged summary whatever order the pods are listed in
    done = attempt_of(
        job, [_pod(2, "Succeeded", merged), _pod(0, "Succeeded", shard), _pod(1, "Succeeded", shard)]
    )
    assert done.outcome == "succeeded" and done.summary == merged
    # one failed shard fails the attempt, even listed before the others' successes
    failed = attempt_of(
        job,
        [_pod(1, "Failed", {"error": "boom", "permanent": False}, 1), _pod(0, "Succeeded", shard)],
    )
    assert failed.outcome == "failed" and failed.error == "boom"
    bad = attempt_of(
        job, [_pod(0, "Succeeded", shard), _pod(2, "Failed", {"error": "bad line", "permanent": True}, 65)]
    )
    assert bad.outcome == "permanent" and bad.error == "bad line"
