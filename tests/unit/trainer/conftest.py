"""Shared fixtures for the trainer's unit tests: a tiny local Llama model (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM + locally trained BPE tokenizer in HF format."""
    from rlaif_trainer.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir: Path):
    """The tiny model loaded once (fp32, CPU) with its tokenizer; treat as read-only."""
    from rlaif_trainer.modeling.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    model.eval()
    return model, tok


def make_stage_config(workdir: Path, stage: str, spec: dict):
    """A resolved StageConfig for ``stage`` from a camelCase spec dict (relative paths under ``workdir``)."""
    import rlaif_api as api

    job = api.RLAIFJob.model_validate({"metadata": {"name": "t", "namespace": "ns"}, "spec": spec})
    return api.resolve_stage_configs(job, workdir / "ws", base_dir=workdir)[stage]


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
