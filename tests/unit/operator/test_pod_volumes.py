"""podTemplate volumes and mounts in the stage pod: the schema's idea of the operator's own volumes
and paths is the builder's, and a user's /dev/shm replaces the operator's instead of clashing."""

from __future__ import annotations

import yaml

import rlaif_api.spec as spec
from rlaif_api import RLAIFJob
from rlaif_operator import builders as b
from rlaif_operator.settings import WORKSPACE_MOUNT
from tests.api_cases import EXAMPLES

from .test_builders import container, pod_spec, stage_job


def test_the_schema_knows_the_builders_volumes_and_paths() -> None:
    assert set(spec.OPERATOR_VOLUMES) == b.RESERVED_VOLUMES
    assert set(spec.OPERATOR_MOUNT_PATHS) == {b.CONFIG_DIR, WORKSPACE_MOUNT}
    mounts = {m["mountPath"] for m in container(stage_job())["volumeMounts"]}
    assert mounts == set(spec.OPERATOR_MOUNT_PATHS)


def test_several_gpus_get_the_operators_shared_memory_unless_the_user_mounts_one() -> None:
    resources = {"default": {"gpus": 4}}
    mine = stage_job(resources=resources)
    assert [m["name"] for m in container(mine)["volumeMounts"] if m["mountPath"] == "/dev/shm"] == [
        b.SHM_VOLUME
    ]
    tpl = {
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    theirs = stage_job(resources=resources, podTemplate=tpl)
    assert [m["name"] for m in container(theirs)["volumeMounts"] if m["mountPath"] == "/dev/shm"] == ["dshm"]
    assert b.SHM_VOLUME not in {v["name"] for v in pod_spec(theirs)["volumes"]}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod_spec(theirs)[
        "volumes"
    ]


def test_the_multi_gpu_example_mounts_shared_memory_once() -> None:
    """examples/kueue-multi-gpu.yaml brings its own /dev/shm for its 8-GPU stages: one mount there,
    not two (the API server refuses a second as "must be unique")."""
    manifest = yaml.safe_load((EXAMPLES / "kueue-multi-gpu.yaml").read_text())
    model = RLAIFJob.model_validate(manifest)
    owner = b.Owner(name="kueue-multi-gpu", namespace="team-alignment", uid="u")
    for stage in model.spec.stages:
        job = b.build_stage_job(model, owner, stage, 1, b.Settings(), "trainer:1")
        paths = [m["mountPath"] for m in container(job)["volumeMounts"]]
        assert len(paths) == len(set(paths)), (stage, paths)
        names = [v["name"] for v in pod_spec(job)["volumes"]]
        assert len(names) == len(set(names)), (stage, names)
