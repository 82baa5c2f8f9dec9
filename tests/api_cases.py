"""Valid and invalid RLAIFJob manifests shared by the pydantic unit tests and the API-server tests.

Each invalid case names the field that the error message must mention, so both validators are held
to "a clear error that names the field".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def base_job(name: str = "valid") -> dict[str, Any]:
    return {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "metadata": {"name": name},
        "spec": {
            "policy": {"model": "embedded:smollm2-135m-instruct"},
            "dataset": {"prompts": "data/prompts.jsonl"},
            "labeler": {"mode": "pointwise", "principles": ["Is the response helpful?"]},
        },
    }


def example_jobs() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def mutate(job: dict[str, Any]) -> None:
        node = job
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def mutate(job: dict[str, Any]) -> None:
        node = job
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(job: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(job)

    return mutate


@dataclass(frozen=True)
class InvalidCase:
    name: str
    mutate: Callable[[dict[str, Any]], None]
    field: str  # must appear in the error message

    def job(self) -> dict[str, Any]:
        job = copy.deepcopy(base_job(f"invalid-{self.name}"))
        self.mutate(job)
        return job


INVALID_CASES = [
    InvalidCase("wrong-enum", _set("spec.rl.algorithm", "dpo"), "algorithm"),
    InvalidCase("negative-gpus", _set("spec.resources.default.gpus", -1), "gpus"),
    InvalidCase("zero-nodes", _set("spec.resources.rl.nodes", 0), "rl.nodes"),
    InvalidCase("too-many-nodes", _set("spec.resources.reward.nodes", 129), "reward.nodes"),
    InvalidCase("nodes-as-string", _set("spec.resources.reward.nodes", "2"), "reward.nodes"),
    InvalidCase("multi-node-label", _set("spec.resources.label.nodes", 2), "label.nodes"),
    InvalidCase("multi-node-evaluate", _set("spec.resources.evaluate.nodes", 4), "evaluate.nodes"),
    InvalidCase("multi-node-default", _set("spec.resources.default.nodes", 2), "default.nodes"),
    InvalidCase("zero-shards", _set("spec.resources.label.shards", 0), "label.shards"),
    InvalidCase("too-many-shards", _set("spec.resources.label.shards", 257), "label.shards"),
    InvalidCase("shards-as-string", _set("spec.resources.label.shards", "2"), "label.shards"),
    InvalidCase("shards-on-rl", _set("spec.resources.rl.shards", 2), "shards"),
    InvalidCase("missing-model", _delete("spec.policy.model"), "model"),
    InvalidCase("openai-without-endpoint", _set("spec.labeler.provider", "openai"), "endpoint"),
    InvalidCase(
        "direct-without-labeler",
        _all(
            _delete("spec.labeler"),
            _set("spec.stages", ["rl"]),
            _set("spec.rl.reward", "direct"),
        ),
        "labeler",
    ),
    InvalidCase("empty-stages", _set("spec.stages", []), "stages"),
    InvalidCase("unknown-field", _set("spec.polcy", {"model": "x"}), "polcy"),
    InvalidCase("stages-out-of-order", _set("spec.stages", ["reward", "label"]), "stages"),
    InvalidCase("repeated-stage", _set("spec.stages", ["label", "label"]), "stages"),
    InvalidCase("bad-quantity", _set("spec.resources.default.memory", "lots"), "memory"),
    InvalidCase("negative-kl", _set("spec.rl.klCoef", -0.1), "klCoef"),
    InvalidCase("zero-temperature", _set("spec.rl.temperature", 0), "temperature"),
    InvalidCase("unknown-rollout-engine", _set("spec.rl.generation", "sglang"), "generation"),
    InvalidCase(
        "vllm-takes-the-whole-gpu", _set("spec.rl.vllmGpuMemoryUtilization", 1.0), "vllmGpuMemoryUtilization"
    ),
    InvalidCase("pointwise-without-principles", _set("spec.labeler.principles", []), "principles"),
    InvalidCase("python-without-callable", _set("spec.labeler.provider", "python"), "callable"),
    InvalidCase(
        "information-term-on-a-pairwise-labeler",
        _all(_set("spec.labeler.mode", "pairwise"), _set("spec.labeler.informationWeight", 4)),
        "informationWeight",
    ),
    InvalidCase(
        "negative-information-weight", _set("spec.labeler.informationWeight", -1), "informationWeight"
    ),
    InvalidCase(
        "rloo-with-one-sample",
        _all(_set("spec.rl.algorithm", "rloo"), _set("spec.rl.samplesPerPrompt", 1)),
        "samplesPerPrompt",
    ),
    InvalidCase(
        "claim-and-size",
        _set("spec.storage", {"persistentVolumeClaim": {"claimName": "data"}, "size": "10Gi"}),
        "size",
    ),
    InvalidCase("reward-stage-without-labels", _set("spec.stages", ["reward", "rl", "evaluate"]), "labels"),
    InvalidCase(
        "evaluate-without-judge",
        _all(
            _delete("spec.labeler"),
            _set("spec.stages", ["evaluate"]),
            _set("spec.evaluation", {"policy": "/p"}),
        ),
        "judge",
    ),
    InvalidCase("rl-without-reward-model", _set("spec.stages", ["rl", "evaluate"]), "reward"),
    InvalidCase("endpoint-not-http", _set("spec.labeler.endpoint", "vllm:8000"), "endpoint"),
    InvalidCase("unknown-labeler-api", _set("spec.labeler.api", "responses"), "labeler.api"),
    InvalidCase(
        "bad-claim-name",
        _set("spec.storage", {"persistentVolumeClaim": {"claimName": "Data_PVC"}}),
        "claimName",
    ),
    InvalidCase("negative-backoff-limit", _set("spec.runPolicy.backoffLimit", -1), "backoffLimit"),
    InvalidCase("wrong-type", _set("spec.rl.steps", "many"), "steps"),
    # Accepted once by both validators, then refused by the API server as stage Jobs (or, for the
    # image, by the kubelet): the schema now follows Kubernetes' own rules for what reaches a Job.
    InvalidCase(
        "priority-class-not-dns",
        _set("spec.runPolicy.priorityClassName", "High_Priority"),
        "priorityClassName",
    ),
    InvalidCase("label-key-with-space", _set("spec.podTemplate.labels", {"bad key!": "x"}), "labels"),
    InvalidCase("label-value-too-long", _set("spec.podTemplate.labels", {"app": "x" * 64}), "labels"),
    InvalidCase(
        "annotation-key-prefix", _set("spec.podTemplate.annotations", {"-bad.com/x": "1"}), "annotations"
    ),
    InvalidCase(
        "node-selector-value", _set("spec.podTemplate.nodeSelector", {"gpu": "a100 80gb"}), "nodeSelector"
    ),
    InvalidCase("image-with-space", _set("spec.image", "rlaif trainer:1"), "image"),
    InvalidCase("gpus-as-string", _set("spec.resources.default.gpus", "1"), "gpus"),
    InvalidCase("env-name-with-equals", _set("spec.podTemplate.env", [{"name": "A=B", "value": "1"}]), "env"),
    InvalidCase(
        "toleration-key",
        _set("spec.podTemplate.tolerations", [{"key": "bad key", "operator": "Exists"}]),
        "key",
    ),
    InvalidCase(
        "toleration-empty-key-equal",
        _set("spec.podTemplate.tolerations", [{"operator": "Equal"}]),
        "operator",
    ),
    # podTemplate volumes and mounts: what the API server's ValidateVolumes/ValidateVolumeMounts refuse.
    InvalidCase(
        "volume-name-not-dns", _set("spec.podTemplate.volumes", [{"name": "Data", "emptyDir": {}}]), "name"
    ),
    InvalidCase(
        "volume-without-source", _set("spec.podTemplate.volumes", [{"name": "data"}]), "volume source"
    ),
    InvalidCase(
        "volume-two-sources",
        _set("spec.podTemplate.volumes", [{"name": "data", "emptyDir": {}, "hostPath": {"path": "/d"}}]),
        "volume source",
    ),
    InvalidCase(
        "volume-host-path-without-path",
        _set("spec.podTemplate.volumes", [{"name": "data", "hostPath": {}}]),
        "hostPath.path",
    ),
    InvalidCase(
        "volume-claim-name",
        _set(
            "spec.podTemplate.volumes", [{"name": "data", "persistentVolumeClaim": {"claimName": "Data_PVC"}}]
        ),
        "claimName",
    ),
    InvalidCase(
        "volume-names-repeat",
        _set(
            "spec.podTemplate.volumes", [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
        ),
        "volumes names must be unique",
    ),
    InvalidCase(
        "mount-of-no-volume",
        _set("spec.podTemplate.volumeMounts", [{"name": "data", "mountPath": "/data"}]),
        "volumeMounts name",
    ),
    InvalidCase(
        "mount-path-relative",
        _all(
            _set("spec.podTemplate.volumes", [{"name": "data", "emptyDir": {}}]),
            _set("spec.podTemplate.volumeMounts", [{"name": "data", "mountPath": "data"}]),
        ),
        "mountPath",
    ),
    InvalidCase(
        "mount-path-repeats",
        _all(
            _set("spec.podTemplate.volumes", [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]),
            _set(
                "spec.podTemplate.volumeMounts",
                [{"name": "a", "mountPath": "/data"}, {"name": "b", "mountPath": "/data"}],
            ),
        ),
        "mountPath must be unique",
    ),
    InvalidCase(
        "mount-over-the-workspace",
        _all(
            _set("spec.podTemplate.volumes", [{"name": "data", "emptyDir": {}}]),
            _set("spec.podTemplate.volumeMounts", [{"name": "data", "mountPath": "/workspace"}]),
        ),
        "mountPath",
    ),
    InvalidCase(
        "mount-sub-path-backstep",
        _all(
            _set("spec.podTemplate.volumes", [{"name": "data", "emptyDir": {}}]),
            _set(
                "spec.podTemplate.volumeMounts",
                [{"name": "data", "mountPath": "/data", "subPath": "a/../../b"}],
            ),
        ),
        "subPath",
    ),
]
