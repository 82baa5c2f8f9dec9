"""The GPU-path spec fields: rl.generation (hf | vllm), the colocated engine's memory share, and the
gradient-checkpointing options (refusals are in tests/api_cases.py, checked here and at the API server)."""

from __future__ import annotations

import rlaif_api as api
from tests.api_cases import base_job


def test_defaults_keep_generation_in_the_trainer_and_checkpointing_off():
    spec = api.RLAIFJob.model_validate(base_job()).spec
    assert spec.rl.generation == "hf"
    assert spec.rl.vllm_gpu_memory_utilization == 0.3
    assert spec.rl.gradient_checkpointing is False and spec.reward_model.gradient_checkpointing is False


def test_vllm_generation_and_checkpointing_are_accepted_in_camel_case():
    job = base_job()
    job["spec"]["rl"] = {"generation": "vllm", "vllmGpuMemoryUtilization": 0.5, "gradientCheckpointing": True}
    job["spec"]["rewardModel"] = {"gradientCheckpointing": True}
    spec = api.RLAIFJob.model_validate(job).spec
    assert (spec.rl.generation, spec.rl.vllm_gpu_memory_utilization) == ("vllm", 0.5)
    assert spec.rl.gradient_checkpointing and spec.reward_model.gradient_checkpointing
