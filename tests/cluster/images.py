"""Build the project's images from its Dockerfile without Docker or a registry, and load them into
the real test node's containerd.

    python -m tests.cluster images [--target operator|trainer|pause ...] [--force]

What is built (buildah, storage under ``~/.cache/rlaif-operator/containers``, so nothing goes to
the system's /var/lib/containers):

* ``localhost/rlaif-base/python:3.11.2-bookworm-<hash>``: a Debian bookworm root filesystem made by
  debootstrap (minbase + python3, python3-venv, python3-pip, python-is-python3, ca-certificates).
  It stands in for the Dockerfile's ``PYTHON_IMAGE`` (python:3.12-slim-bookworm).
* ``localhost/rlaif-base/torch:2.9.1-<hash>``: that image with a virtualenv in /opt/torch holding
  torch 2.9.1 from PyPI, first on PATH. It stands in for ``TORCH_IMAGE`` (pytorch/pytorch:2.9.1-cuda12.8-
  cudnn9-runtime, which also has a Python with torch first on PATH). PyPI has only the CUDA build of
  torch for Linux x86_64, and that build loads its nvidia-* libraries at import even on a CPU, so
  they are installed too (about 4 GB); there is no CPU-only torch on PyPI. The wheels are downloaded
  once into ``~/.cache/rlaif-operator/wheelhouse`` and installed from there with ``--no-index``.
* ``localhost/rlaif-operator:0.1.0-<hash>`` and ``localhost/rlaif-trainer:0.1.0-<hash>``: the
  Dockerfile's ``operator`` and ``trainer`` targets, with the two bases passed as ``--build-arg``.
  The Dockerfile is used as users use it; its BuildKit features (``RUN --mount=type=bind,from=``)
  are ones buildah supports.
* ``localhost/rlaif-pause:1``: the pod sandbox image, busybox-static's ``sleep`` (no registry is
  reachable, so the usual registry.k8s.io/pause cannot be pulled).

Every tag ends in a hash of the image's inputs (the Dockerfile, the files it copies, the base's
hash, the build arguments), so an unchanged image is found and not rebuilt, and a change of any
input rebuilds it. The build needs PyPI (pip inside the build) and Debian's archive (debootstrap).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import binaries

if TYPE_CHECKING:
    from .node import RealNode

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("RLAIF_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# bookworm's python3 (security updates keep the upstream version); the build checks it.
DEBIAN_PYTHON = "3.11.2"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
TORCH_VERSION = "2.9.1"  # the GPU image's torch (Dockerfile TORCH_IMAGE), so both behave alike
PROJECT_VERSION = "0.1.0"
PAUSE_IMAGE = "localhost/rlaif-pause:1"
# Files in the build context that never reach an image (.dockerignore has the same).
_IGNORED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_IGNORED_SUFFIXES = (".pyc", ".egg-info")


class ImageError(RuntimeError):
    """An image could not be built or imported."""


@dataclass(frozen=True)
class Image:
    name: str  # full reference, e.g. localhost/rlaif-trainer:0.1.0-0123456789
    target: str

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.rsplit(":", 1)[1]


def cache_root() -> Path:
    return binaries.cache_dir().parent


def _store_args() -> list[str]:
    root = cache_root() / "containers"
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]


def buildah(*args: str, log: Path | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    if shutil.which("buildah") is None:
        raise ImageError("buildah is not installed: run scripts/install-node-deps.sh (as root)")
    cmd = ["buildah", *_store_args(), *args]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log else None
        if out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n")
            out.flush()
        # Without a log file the output goes to the terminal (live progress of a long build).
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False
        )
    if proc.returncode != 0:
        detail = _tail(log, 40) if log else "(output above)"
        raise ImageError(f"buildah {' '.join(args[:3])} ... exited {proc.returncode}:\n{detail}")
    return proc


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def exists(name: str) -> bool:
    proc = subprocess.run(
        ["buildah", *_store_args(), "inspect", "--type", "image", "--format", "{{.FromImageID}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


def size_bytes(name: str) -> int:
    proc = subprocess.run(
        ["buildah", *_store_args(), "images", "--json", name], capture_output=True, text=True, check=False
    )
    data = json.loads(proc.stdout or "[]")
    if not data:
        return 0
    # buildah 1.28 prints it rounded, in decimal units ("199 MB", "6.92 GB").
    m = re.fullmatch(r"([\d.]+)\s*([kMGT]?B)", str(data[0].get("size", "0 B")).strip())
    if not m:
        return 0
    return int(float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[m.group(2)])


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    d = cache_root()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".images.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[tests.cluster] waiting for another image build ({d / '.images.lock'})", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _context_files(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for rel in paths:
        p = ROOT / rel
        candidates = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in candidates:
            parts = f.relative_to(ROOT).parts
            if any(part in _IGNORED_PARTS or part.endswith(_IGNORED_SUFFIXES) for part in parts):
                continue
            files.append(f)
    return files


def dockerfile_inputs() -> list[Path]:
    """The Dockerfile, .dockerignore and every file its COPY lines take from the build context."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*COPY\s+(.*)$", line)
        if not m or "--from" in m.group(1):
            continue
        sources += [a for a in m.group(1).split() if not a.startswith("--")][:-1]
    return [DOCKERFILE, ROOT / ".dockerignore", *_context_files(sources)]


def _files_hash(files: Iterable[Path]) -> str:
    parts: list[bytes | str] = []
    for f in files:
        parts += [str(f.relative_to(ROOT)), f.read_bytes()]
    return _hash(*parts)


# -- the two base images ---------------------------------------------------------------------


def python_base(log: Path | None = None) -> Image:
    key = _hash("python-base", DEBIAN_SUITE, DEBIAN_MIRROR, *DEBIAN_PACKAGES, _BASE_CONTAINERFILE)
    image = Image(f"localhost/rlaif-base/python:{DEBIAN_PYTHON}-{DEBIAN_SUITE}-{key}", "python-base")
    if exists(image.name):
        return image
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: run scripts/install-node-deps.sh (as root)")
    with tempfile.TemporaryDirectory(prefix="rlaif-rootfs-", dir=cache_root()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        print(f"[tests.cluster] debootstrap {DEBIAN_SUITE} for {image.name} ...", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(log, "a")) if log else subprocess.DEVNULL
            proc = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(DEBIAN_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=1800,
            )
        if proc.returncode != 0:
            raise ImageError(
                f"debootstrap exited {proc.returncode}" + (f":\n{_tail(log, 30)}" if log else "")
            )
        got = subprocess.run(
            ["chroot", str(rootfs), "python3", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
        if got[-1:] != [DEBIAN_PYTHON]:
            raise ImageError(f"{DEBIAN_SUITE}'s python3 is {got}, not {DEBIAN_PYTHON}: update DEBIAN_PYTHON")
        # Package caches and lists are not needed at run time (slim images drop them too).
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(Path(tmp) / "rootfs.tar"), "."], check=True)
        shutil.rmtree(rootfs)
        (Path(tmp) / "Containerfile").write_text(_BASE_CONTAINERFILE)
        buildah("bud", "--layers=false", "-t", image.name, tmp, log=log)
    return image


_BASE_CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]
"""

_TORCH_CONTAINERFILE = """\
ARG PYTHON_BASE
FROM ${PYTHON_BASE}
ARG TORCH_VERSION
# A virtualenv first on PATH, like the conda environment of the pytorch/pytorch images: the
# Dockerfile's trainer stage pip-installs into whatever Python the base puts first.
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \\
    python3 -m venv /opt/torch \\
 && /opt/torch/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse "torch==${TORCH_VERSION}" \\
 && /opt/torch/bin/python -c "import torch; print(torch.__version__)"
ENV PATH=/opt/torch/bin:$PATH
"""


def wheelhouse() -> Path:
    return cache_root() / "wheelhouse" / f"torch-{TORCH_VERSION}-cp311"


def _download_torch(log: Path | None) -> Path:
    """torch and its dependencies for CPython 3.11 on manylinux x86_64, from PyPI, once."""
    dest = wheelhouse()
    stamp = dest / ".complete"
    if stamp.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    print(
        f"[tests.cluster] downloading torch {TORCH_VERSION} wheels (~4 GB) into {dest} ...", file=sys.stderr
    )
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-cache-dir", "--only-binary", ":all:",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux_2_12_x86_64", "--platform", "manylinux2010_x86_64",
        "-d", str(dest), f"torch=={TORCH_VERSION}",
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log else subprocess.DEVNULL
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=3600)
    if proc.returncode != 0:
        raise ImageError(f"pip download torch=={TORCH_VERSION} exited {proc.returncode}")
    stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return dest


def torch_base(log: Path | None = None) -> Image:
    py = python_base(log)
    key = _hash("torch-base", py.name, TORCH_VERSION, _TORCH_CONTAINERFILE)
    image = Image(f"localhost/rlaif-base/torch:{TORCH_VERSION}-{key}", "torch-base")
    if exists(image.name):
        return image
    wheels = _download_torch(log)
    with tempfile.TemporaryDirectory(prefix="rlaif-torch-", dir=cache_root()) as tmp:
        (Path(tmp) / "Containerfile").write_text(_TORCH_CONTAINERFILE)
        # The wheelhouse is bind-mounted from the context; a hard-linked copy costs no space.
        subprocess.run(["cp", "-al", str(wheels), str(Path(tmp) / "wheelhouse")], check=True)
        buildah(
            "bud", "--layers=false", "--network", "host",
            "--build-arg", f"PYTHON_BASE={py.name}", "--build-arg", f"TORCH_VERSION={TORCH_VERSION}",
            "-t", image.name, tmp, log=log,
        )  # fmt: skip
    return image


# -- the project's images --------------------------------------------------------------------


def _project_image(target: str, log: Path | None) -> Image:
    py = python_base(log)
    args = {"PYTHON_IMAGE": py.name}
    if target == "trainer":
        args["TORCH_IMAGE"] = torch_base(log).name
    key = _hash(target, _files_hash(dockerfile_inputs()), *(f"{k}={v}" for k, v in sorted(args.items())))
    repo = {"operator": "localhost/rlaif-operator", "trainer": "localhost/rlaif-trainer"}[target]
    image = Image(f"{repo}:{PROJECT_VERSION}-{key}", target)
    if exists(image.name):
        return image
    print(f"[tests.cluster] building {image.name} (Dockerfile --target {target}) ...", file=sys.stderr)
    build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
    t0 = time.monotonic()
    # --network host: pip inside the build reaches PyPI; --layers=false: one layer per stage.
    buildah(
        "bud", "--layers=false", "--network", "host", "--target", target, *build_args, *_trust_args(),
        "-f", str(DOCKERFILE), "-t", image.name, str(ROOT), log=log,
    )  # fmt: skip
    _record(image, time.monotonic() - t0)
    _remove_older(image)
    return image


# A build younger than this may belong to another test session on the same machine that built it
# and has yet to push it into its node (between its build and its import the lock is free).
KEEP_RECENT_SECONDS = 2 * 3600


def _remove_older(image: Image) -> None:
    """Only the newest build of each project image is kept (each old trainer is ~1 GB of its own),
    and the builds of the last two hours, which a concurrent session may still be importing."""
    proc = subprocess.run(
        ["buildah", *_store_args(), "images", "--json"], capture_output=True, text=True, check=False
    )
    horizon = time.time() - KEEP_RECENT_SECONDS
    for img in json.loads(proc.stdout or "[]"):
        if int(img.get("created") or 0) > horizon:
            continue
        for name in img.get("names") or []:
            if name.rsplit(":", 1)[0] == image.repository and name != image.name:
                subprocess.run(["buildah", *_store_args(), "rmi", name], capture_output=True, check=False)


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _trust_args() -> list[str]:
    """RUN steps trust what this machine trusts: its CA bundle and a pip.conf naming it are
    bind-mounted (read-only, RUN steps only; nothing lands in an image). Machines whose HTTPS goes
    through an inspecting proxy with its own CA (as here) need it for PyPI; elsewhere it is the
    same Debian bundle the base image has."""
    if not HOST_CA_BUNDLE.exists():
        return []
    conf = cache_root() / "images" / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
    return ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "--volume", f"{conf}:/etc/pip.conf:ro"]


def pause_image(log: Path | None = None) -> Image:
    image = Image(PAUSE_IMAGE, "pause")
    busybox = Path("/bin/busybox")
    if exists(image.name):
        return image
    if not busybox.exists():
        raise ImageError("/bin/busybox is missing: run scripts/install-node-deps.sh (busybox-static)")
    with tempfile.TemporaryDirectory(prefix="rlaif-pause-", dir=cache_root()) as tmp:
        shutil.copy2(busybox, Path(tmp) / "busybox")
        (Path(tmp) / "Containerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\nUSER 65535:65535\n"
            # The sandbox's only job is to hold the pod's namespaces open.
            'ENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]\n'
        )
        buildah("bud", "--layers=false", "-t", image.name, tmp, log=log)
    return image


def _record(image: Image, seconds: float) -> None:
    """Build time and size, for BENCHMARKS.md."""
    path = cache_root() / "images" / "builds.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"image": image.name, "seconds": round(seconds, 1), "bytes": size_bytes(image.name)}
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def build(targets: Iterable[str] = ("operator", "trainer"), *, log: Path | None = None) -> dict[str, Image]:
    """Build (or find) the images for ``targets`` (operator, trainer, pause)."""
    out: dict[str, Image] = {}
    with _lock():
        for t in targets:
            out[t] = pause_image(log) if t == "pause" else _project_image(t, log)
    return out


# -- into the node ---------------------------------------------------------------------------


def oci_layout() -> Path:
    """A persistent OCI image layout that every image is pushed to: blobs already there (the 8 GB
    torch base, above all) are not written again when only the project's layer changed."""
    return cache_root() / "images" / "oci"


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def _descriptor(layout: Path, name: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    found = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(_REF_NAME) == name]
    if not found:
        raise ImageError(f"{name} is not in {layout}/index.json after the push")
    return dict(found[-1])


_REF_NAME = "org.opencontainers.image.ref.name"


def _stream_to_containerd(node: RealNode, layout: Path, name: str) -> None:
    """Feed ``ctr images import -`` an OCI archive of one image that leaves out the layers the node's
    content store already has (the importer ingests what the tar holds, then resolves the image
    against its whole store)."""
    desc = _descriptor(layout, name)
    manifest = json.loads(_blob(layout, desc["digest"]).read_text())
    have = set(node.ctr("content", "ls", "-q").stdout.split())
    blobs = [desc["digest"], manifest["config"]["digest"]]
    blobs += [layer["digest"] for layer in manifest["layers"] if layer["digest"] not in have]
    index = {
        "schemaVersion": 2,
        "manifests": [{**desc, "annotations": {_REF_NAME: name, "io.containerd.image.name": name}}],
    }
    cmd = ["ctr", "--address", str(node.socket), "--namespace", "k8s.io", "images", "import", "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            for member, data in (
                ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                ("index.json", json.dumps(index).encode()),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for digest in dict.fromkeys(blobs):
                algo, _, hexd = digest.partition(":")
                tar.add(str(_blob(layout, digest)), arcname=f"blobs/{algo}/{hexd}")
    finally:
        proc.stdin.close()
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        rc = proc.wait(timeout=1800)
    if rc != 0:
        raise ImageError(f"ctr images import {name} exited {rc}: {out[-2000:]}")


def _prune_layout(layout: Path, keep: set[str]) -> None:
    """Drop older tags of the repositories in ``keep`` from the layout, then unreferenced blobs."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    repos = {k.rsplit(":", 1)[0] for k in keep}
    manifests = [
        m
        for m in index.get("manifests", [])
        if (ref := m.get("annotations", {}).get(_REF_NAME, "")) in keep or ref.rsplit(":", 1)[0] not in repos
    ]
    index["manifests"] = manifests
    index_path.write_text(json.dumps(index))
    used: set[str] = set()
    for m in manifests:
        used.add(m["digest"])
        body = json.loads(_blob(layout, m["digest"]).read_text())
        used.add(body["config"]["digest"])
        used.update(layer["digest"] for layer in body["layers"])
    for f in (layout / "blobs").glob("*/*"):
        if f"{f.parent.name}:{f.name}" not in used:
            f.unlink()


def import_into(node: RealNode, imgs: Iterable[Image], log: Path | None = None) -> None:
    """Copy images from buildah's storage into the node's containerd (namespace k8s.io)."""
    for image in imgs:
        if image.name not in node.images():
            t0 = time.monotonic()
            layout = oci_layout()
            layout.parent.mkdir(parents=True, exist_ok=True)
            with _lock():
                # Uncompressed: containerd would only decompress it again, and gzip on 2 cores is slow.
                buildah("push", "--disable-compression", image.name, f"oci:{layout}:{image.name}", log=log)
                _stream_to_containerd(node, layout, image.name)
                _prune_layout(layout, {image.name})
            if image.name not in node.images():
                raise ImageError(f"{image.name} is not in containerd after the import")
            print(
                f"[tests.cluster] imported {image.name} into the node in {time.monotonic() - t0:.0f}s",
                file=sys.stderr,
            )
        _remove_older_from_node(node, image)


def _remove_older_from_node(node: RealNode, image: Image) -> None:
    """Older tags of the same image go, and so do the ``sha256:<image id>`` references the CRI
    plugin adds for every image, unless they point at a kept one; containerd's GC then drops their
    layers, so the persistent store holds one operator and one trainer."""
    refs: dict[str, str] = {}  # reference -> manifest digest
    for line in node.ctr("images", "ls").stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            refs[parts[0]] = parts[2]
    older = [r for r in refs if r.rsplit(":", 1)[0] == image.repository and r != image.name]
    kept = {d for r, d in refs.items() if not r.startswith("sha256:") and r not in older}
    stale = older + [r for r, d in refs.items() if r.startswith("sha256:") and d not in kept]
    if stale:
        node.ctr("images", "rm", "--sync", *stale, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster images",
        description="Build the Dockerfile's operator and trainer targets with buildah on locally made "
        "base images (Debian bookworm from debootstrap; torch from PyPI), cached by a hash of their inputs.",
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=["operator", "trainer", "pause"],
        help="image to build (repeatable; default: operator and trainer)",
    )
    parser.add_argument("--log", type=Path, default=None, help="append build output here (default: terminal)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        built = build(args.target or ["operator", "trainer"], log=args.log)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for target, image in built.items():
        print(f"{target:<10} {image.name}  {size_bytes(image.name) / 1e9:.2f} GB")
    print(f"# {time.monotonic() - t0:.0f}s; storage: {cache_root() / 'containers'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
