"""Invariants of the two-target Dockerfile, checked without a Docker engine (dockerfile-parse).

The images are built with ``docker build --target operator|trainer .``; these tests keep the file
honest: both targets exist, every base image is pinned, the final stages run as a non-root user,
the entry points are console scripts the package declares, and the operator image stays torch-free.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.cluster import images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TARGETS = {"operator": "rlaif-operator", "trainer": "rlaif-train"}


@dataclass
class Stage:
    name: str | None
    base: str  # the FROM image after ARG substitution
    instructions: list[dict] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


def _substitute(value: str, args: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in args:
            raise AssertionError(f"${name} has no default: builds without --build-arg would fail")
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse(text: str, build_args: dict[str, str] | None = None) -> tuple[dict[str | None, Stage], list[Stage]]:
    """The stages, with ARG defaults substituted (``build_args`` override them, as --build-arg does)."""
    # fileobj keeps the parser read-only: with a path (or none, meaning ./Dockerfile) it writes.
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr in parser.structure:
        kind, value = instr["instruction"], instr["value"]
        if kind == "COMMENT":
            continue
        if kind == "ARG" and not stages:
            name, _, default = value.partition("=")
            global_args[name.strip()] = (build_args or {}).get(name.strip(), default.strip().strip('"'))
            continue
        if kind == "FROM":
            parts = value.split()
            name = None
            if len(parts) >= 3 and parts[-2].upper() == "AS":
                name = parts[-1]
            image = next(p for p in parts if not p.startswith("--"))
            stages.append(Stage(name=name, base=_substitute(image, global_args)))
            continue
        assert stages, f"{kind} before the first FROM"
        stages[-1].instructions.append(instr)
    return {s.name: s for s in stages}, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str | None, Stage], list[Stage]]:
    return parse(DOCKERFILE.read_text())


# The variant the test cluster builds (tests/cluster/images.py, `make images`): the same Dockerfile
# with locally made bases passed as build arguments instead of the Docker Hub images.
LOCAL_BUILD_ARGS = {
    "PYTHON_IMAGE": f"localhost/rlaif-base/python:{images.DEBIAN_PYTHON}-{images.DEBIAN_SUITE}-0123456789ab",
    "TORCH_IMAGE": f"localhost/rlaif-base/torch:{images.TORCH_VERSION}-0123456789ab",
}


@pytest.fixture(scope="module", params=["gpu", "local"])
def variant(request) -> tuple[str, tuple[dict[str | None, Stage], list[Stage]]]:
    args = LOCAL_BUILD_ARGS if request.param == "local" else None
    return request.param, parse(DOCKERFILE.read_text(), args)


def _dependencies(name: str, by_name: dict[str | None, Stage]) -> list[Stage]:
    """The stage and every stage it builds on: FROM <stage>, COPY --from=<stage>, RUN --mount=from=<stage>."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        stage = by_name[current]
        if stage.base in by_name:
            todo.append(stage.base)
        for instr in stage.instructions:
            for ref in re.findall(r"--(?:mount=[^ ]*?\bfrom|from)=([\w.-]+)", instr["value"]):
                if ref in by_name:
                    todo.append(ref)
    return [by_name[n] for n in seen]


def _external_images(by_name: dict[str | None, Stage], stages: list[Stage]) -> list[str]:
    return [s.base for s in stages if s.base not in by_name]


def test_both_targets_exist(dockerfile):
    by_name, _ = dockerfile
    assert set(TARGETS) <= set(by_name), f"missing targets: {set(TARGETS) - set(by_name)}"


def test_every_base_image_is_pinned(dockerfile):
    by_name, stages = dockerfile
    images = _external_images(by_name, stages)
    assert images
    for image in images:
        if "@sha256:" in image:
            continue
        _repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"FROM {image}: no tag; pin an exact version"
        assert tag != "latest", f"FROM {image}: 'latest' is not a pinned version"
        # An exact tag carries a full version, not a floating major like python:3 or pytorch:2.
        assert re.search(r"\d+\.\d+\.\d+", tag), (
            f"FROM {image}: tag {tag!r} floats; use an exact x.y.z version"
        )


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_final_stage_runs_as_non_root(dockerfile, target):
    by_name, _ = dockerfile
    # USER is inherited through FROM <stage>; the last USER along the chain wins.
    chain = []
    stage: Stage | None = by_name[target]
    while stage is not None:
        chain.append(stage)
        stage = by_name.get(stage.base)
    users = [u for s in reversed(chain) for u in s.all("USER")]
    assert users, f"target {target} never sets USER, so it runs as the base image's user (root)"
    user = users[-1].split(":")[0].strip()
    assert user not in ("root", "0", ""), f"target {target} runs as {users[-1]!r}"
    if user.isdigit():
        assert int(user) >= 1000, f"target {target}: uid {user} is a system uid"
    # runAsNonRoot in Kubernetes can only verify a numeric uid.
    assert user.isdigit(), f"target {target}: USER {user!r} should be numeric so runAsNonRoot can verify it"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_entrypoint_is_a_declared_console_script(dockerfile, target):
    by_name, _ = dockerfile
    entrypoints = by_name[target].all("ENTRYPOINT")
    assert entrypoints, f"target {target} has no ENTRYPOINT"
    argv = json.loads(entrypoints[-1])  # exec form: signals reach the process, no shell in between
    assert isinstance(argv, list) and argv, "ENTRYPOINT must use the exec (JSON) form"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == TARGETS[target]
    assert argv[0] in scripts, f"{argv[0]} is not in pyproject's [project.scripts]: {sorted(scripts)}"
    module, _, func = scripts[argv[0]].partition(":")
    package, *rest = module.split(".")
    source_root = {"rlaif_api": "api", "rlaif_operator": "operator", "rlaif_trainer": "trainer"}[package]
    module_path = ROOT / source_root / package / Path(*rest)
    candidates = [module_path.with_suffix(".py"), module_path / "__init__.py"]
    existing = [c for c in candidates if c.exists()]
    if existing:  # the operator's __main__ may still be in progress; once it exists it must define main
        assert re.search(rf"^(async )?def {func}\(", existing[0].read_text(), re.M), (
            f"{existing[0]} has no {func}()"
        )
    elif package == "rlaif_trainer":
        pytest.fail(f"{scripts[argv[0]]} does not exist")


def _run_text(stages: list[Stage]) -> str:
    return "\n".join(v for s in stages for v in s.all("RUN"))


def test_operator_image_has_no_torch(dockerfile):
    by_name, _ = dockerfile
    deps = _dependencies("operator", by_name)
    runs = _run_text(deps)
    assert "[operator]" in runs, "the operator image must install the `operator` extra"
    assert "[trainer]" not in runs and "[dev]" not in runs, "the operator image must not install torch"
    assert "torch" not in by_name["operator"].base
    assert "torch" not in " ".join(s.base for s in deps)


def _first_party_imports(package_dir: Path) -> dict[str, set[str]]:
    """``{module file: top-level first-party packages it imports}``, function-level imports included."""
    import ast

    first_party = {"rlaif_api", "rlaif_operator", "rlaif_trainer"}
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & first_party
    return found


def test_operator_image_holds_no_trainer_code(dockerfile):
    """The shared wheel carries both packages; the operator image removes the trainer's, and the
    operator's import closure (its own modules and rlaif_api's) never reaches it."""
    by_name, _ = dockerfile
    runs = _run_text(_dependencies("operator", by_name))
    assert re.search(r"rm -r .*rlaif_trainer", runs), "the operator venv must drop the rlaif_trainer package"
    assert "rm /opt/venv/bin/rlaif-train" in runs, "the operator venv must drop the rlaif-train script"
    assert '! python -c "import rlaif_trainer"' in runs, "the build must check rlaif_trainer is gone"
    for root, allowed in (
        ("operator/rlaif_operator", {"rlaif_operator", "rlaif_api"}),
        ("api/rlaif_api", {"rlaif_api"}),
    ):
        for module, imported in _first_party_imports(ROOT / root).items():
            assert imported <= allowed, (
                f"{module} imports {sorted(imported - allowed)}, absent from the operator image"
            )


def test_trainer_image_is_cuda_torch_with_baked_model(dockerfile):
    by_name, _ = dockerfile
    deps = _dependencies("trainer", by_name)
    bases = " ".join(s.base for s in deps if s.base not in by_name)
    assert "cuda" in bases, f"trainer base images {bases} are not CUDA-capable"
    runs = _run_text(deps)
    assert "[trainer]" in runs
    assert "rlaif-train fetch-model" in runs, "the embedded default model must be baked in at build time"
    env = " ".join(v for s in deps for v in s.all("ENV"))
    assert "RLAIF_CACHE_DIR=" in env, (
        "the baked model must live in a fixed cache dir the runtime user can read"
    )


def _trainer_requirement(name: str) -> Requirement:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "trainer"
    ]
    found = [Requirement(r) for r in extra if canonicalize_name(Requirement(r).name) == name]
    assert len(found) == 1, f"the `trainer` extra should list {name} exactly once: {found}"
    return found[0]


def _floor(specifier: SpecifierSet) -> Version | None:
    floors = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def _torch_in_base_image(image: str) -> Version:
    """The torch release an official ``pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-<flavour>`` tag ships."""
    repo, _, tag = image.split("@", 1)[0].rpartition(":")
    assert repo.removeprefix("docker.io/") == "pytorch/pytorch", (
        f"trainer base {image}: not an official pytorch/pytorch image, so its torch version is unknown here"
    )
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-(runtime|devel)", tag)
    assert match, f"trainer base {image}: tag {tag!r} is not <torch>-cuda<x.y>-cudnn<n>-runtime|devel"
    return Version(match.group(1))


def test_trainer_base_image_torch_satisfies_pyproject(dockerfile):
    """pip keeps the base image's torch only if it satisfies the `trainer` extra; an older one is either
    replaced by a second CUDA torch from PyPI or, when the build pins it, fails the install. A torch
    below transformers' floor is worse: transformers imports, logs one line and disables PyTorch."""
    by_name, _ = dockerfile
    base = by_name["trainer"].base
    while base in by_name:  # FROM <stage>: the image the trainer's Python environment comes from
        base = by_name[base].base
    shipped = _torch_in_base_image(base)
    requirement = _trainer_requirement("torch")
    assert shipped in requirement.specifier, f"{base} ships torch {shipped}, pyproject wants {requirement}"


def test_pyproject_torch_floor_covers_transformers_torch_floor():
    """pip installs the newest transformers the bounds allow; whatever torch it declares (its `torch`
    extra) must be implied by ours, or an image built at our floor gets a transformers without torch.
    Checked against the installed transformers, i.e. the one a fresh resolve picks today."""
    try:
        dist = importlib.metadata.distribution("transformers")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers is not installed")
    theirs = [
        Requirement(r)
        for r in dist.requires or []
        if canonicalize_name(Requirement(r).name) == "torch"
        and Requirement(r).marker is not None
        and Requirement(r).marker.evaluate({"extra": "torch"})
    ]
    their_floor = max((f for r in theirs if (f := _floor(r.specifier)) is not None), default=None)
    if their_floor is None:
        pytest.skip(f"transformers {dist.version} declares no torch floor")
    our_floor = _floor(_trainer_requirement("torch").specifier)
    assert our_floor is not None and our_floor >= their_floor, (
        f"transformers {dist.version} needs torch>={their_floor}; pyproject's trainer extra allows torch>={our_floor}"
    )


def test_trainer_install_keeps_the_base_image_torch(dockerfile):
    """The trainer stage installs with the base image's torch as a constraint and checks that
    transformers did not disable it, so a mismatch fails the build rather than the first job."""
    by_name, _ = dockerfile
    runs = "\n".join(by_name["trainer"].all("RUN"))
    install = next(r for r in by_name["trainer"].all("RUN") if "[trainer]" in r)
    assert re.search(r"pip install -c (\S+) ", install), (
        "the `trainer` install should pin the base image's torch with a constraints file"
    )
    # pip compares the installed distribution's version; torch.__version__ may carry a local label
    # the distribution lacks (PyPI's torch 2.9.1 says 2.9.1+cu128), and such a pin matches nothing.
    assert re.search(r"""importlib\.metadata.*version\(\\?["']torch\\?["']\)""", install), (
        "pin torch by importlib.metadata.version('torch'), not torch.__version__"
    )
    assert "torch.__version__" not in install
    assert "is_torch_available" in runs


def test_trainer_reads_the_baked_model_read_only(dockerfile):
    """Stage pods set RLAIF_CACHE_DIR to their workspace; the image's baked model must still be found."""
    by_name, _ = dockerfile
    env = " ".join(v for s in _dependencies("trainer", by_name) for v in s.all("ENV"))
    cache = re.search(r"\bRLAIF_CACHE_DIR=(\S+)", env)
    readonly = re.search(r"\bRLAIF_READONLY_CACHE_DIRS=(\S+)", env)
    assert cache and readonly, "the trainer image should set RLAIF_CACHE_DIR and RLAIF_READONLY_CACHE_DIRS"
    assert cache.group(1) in readonly.group(1).split(":"), (
        f"RLAIF_READONLY_CACHE_DIRS={readonly.group(1)} misses the build's cache {cache.group(1)}"
    )


def test_torch_version_checks_catch_an_old_base_image():
    by_name, stages = parse("FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime AS trainer\n")
    assert _torch_in_base_image(stages[0].base) == Version("2.5.1")
    with pytest.raises(AssertionError, match=r"ships torch 2\.5\.1"):
        test_trainer_base_image_torch_satisfies_pyproject((by_name, stages))
    with pytest.raises(AssertionError, match="not an official"):
        _torch_in_base_image("nvidia/cuda:12.4.1-runtime-ubuntu22.04")


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile):
    _, stages = dockerfile
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in stages:
        for value in stage.all("COPY"):
            parts = [p for p in value.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in value.split()):
                continue
            for src in parts[:-1]:
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the build context"
                assert src not in ignored, f"COPY {src}: excluded by .dockerignore"
    for secret in (".git", ".venv", ".env"):
        assert secret in ignored, f".dockerignore should exclude {secret}"


def test_parser_catches_violations():
    """The checks above can fail: a root user, a latest tag and a missing target are all caught."""
    bad = "FROM python:latest AS operator\nUSER root\nENTRYPOINT rlaif-operator\n"
    by_name, stages = parse(bad)
    assert "trainer" not in by_name
    assert _external_images(by_name, stages) == ["python:latest"]
    with pytest.raises(AssertionError):
        test_every_base_image_is_pinned((by_name, stages))
    with pytest.raises(AssertionError):
        test_final_stage_runs_as_non_root((by_name, stages), "operator")
    with pytest.raises(json.JSONDecodeError):
        test_entrypoint_is_a_declared_console_script((by_name, stages), "operator")
    floating = parse("ARG IMG=python:3-slim\nFROM ${IMG} AS operator\n")
    with pytest.raises(AssertionError, match="floats"):
        test_every_base_image_is_pinned(floating)


def test_both_variants_keep_the_static_properties(variant):
    """The GPU image users build and the local one the e2e tier builds: same targets, every base
    pinned (the local tags carry a version and an input hash), non-root, declared entry points."""
    name, parsed = variant
    test_both_targets_exist(parsed)
    test_every_base_image_is_pinned(parsed)
    for target in TARGETS:
        test_final_stage_runs_as_non_root(parsed, target)
        test_entrypoint_is_a_declared_console_script(parsed, target)
    test_operator_image_has_no_torch(parsed)
    by_name, stages = parsed
    bases = _external_images(by_name, stages)
    if name == "local":
        assert set(bases) == set(LOCAL_BUILD_ARGS.values()), bases
    else:
        assert not any(b.startswith("localhost/") for b in bases), bases


def test_local_torch_base_satisfies_pyproject():
    """The local trainer base installs torch==images.TORCH_VERSION from PyPI into a virtualenv first on
    PATH (where the Dockerfile's trainer stage installs); that torch must satisfy the trainer extra."""
    assert Version(images.TORCH_VERSION) in _trainer_requirement("torch").specifier
    containerfile = images._TORCH_CONTAINERFILE
    assert "torch==${TORCH_VERSION}" in containerfile and "--no-index" in containerfile
    assert "ENV PATH=/opt/torch/bin:$PATH" in containerfile
    # Same torch line as the GPU image's base, so both variants run the same torch.
    gpu_by_name, _ = parse(DOCKERFILE.read_text())
    assert _torch_in_base_image(gpu_by_name["trainer"].base) == Version(images.TORCH_VERSION)


def test_embedded_gguf_variable_is_set_after_the_fetch(dockerfile):
    """While RLAIF_EMBEDDED_GGUF is set, fetch-model reads the model from that path; set before the
    fetch, it names a file that does not exist yet and the build fails (exit 65)."""
    by_name, _ = dockerfile
    instrs = by_name["trainer"].instructions
    fetch = next(i for i, x in enumerate(instrs) if x["instruction"] == "RUN" and "fetch-model" in x["value"])
    gguf_env = [
        i for i, x in enumerate(instrs) if x["instruction"] == "ENV" and "RLAIF_EMBEDDED_GGUF" in x["value"]
    ]
    assert gguf_env and all(i > fetch for i in gguf_env), (
        "set RLAIF_EMBEDDED_GGUF after `rlaif-train fetch-model`"
    )
