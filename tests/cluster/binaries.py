"""Locate or build the control-plane binaries.

Lookup order for a binary ``NAME`` (e.g. ``kube-apiserver``):

1. ``TEST_ASSET_<NAME>`` (upper case, ``-`` -> ``_``, e.g. ``TEST_ASSET_KUBE_APISERVER``):
   an explicit path to the executable (the envtest convention).
2. ``$KUBEBUILDER_ASSETS/NAME`` when ``KUBEBUILDER_ASSETS`` is set and the file exists
   (envtest ships etcd, kube-apiserver and kubectl; the rest is built).
3. The per-user cache: ``${RLAIF_TEST_BIN_DIR:-${XDG_CACHE_HOME:-~/.cache}/rlaif-operator/bin}/
   NAME-VERSION-HASH``, where HASH covers the wrapper module's go.mod/go.sum and ldflags.
4. A build from the pinned Go wrapper modules in ``tests/cluster/go/`` through the Go module
   proxy (``GOTOOLCHAIN=local``, ``-trimpath``, version ldflags, ``-p 2``), serialised
   across processes by a lock file in the cache directory. ``RLAIF_TEST_NO_BUILD=1``
   turns this step off.

When every step fails a :class:`BinaryError` names the binary and says how to provide it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"

KUBE_VERSION = "v1.36.3"
# sigs.k8s.io/cli-utils, whose pkg/kstatus go/kstatus wraps (tests of the RLAIFJob conditions).
KSTATUS_VERSION = "v0.37.2"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
COREDNS_VERSION = "v1.15.0"
KUEUE_VERSION = "v0.17.1"  # newest on the module proxy; own k8s.io v0.35 libs, within skew of 1.36
# The newest JobSet on the module proxy (v0.12.1+ are not served); built against k8s.io v0.36 and
# controller-runtime v0.24, i.e. Kubernetes 1.36 like the control plane.
JOBSET_VERSION = "v0.12.0"


def _kube_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.gitCommit={version}",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(flags)


@dataclass(frozen=True)
class BinarySpec:
    name: str
    version: str
    module: str  # directory under tests/cluster/go/
    package: str  # Go package path to build
    ldflags: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ("--version",)

    @property
    def env_var(self) -> str:
        return "TEST_ASSET_" + self.name.upper().replace("-", "_")

    @property
    def module_dir(self) -> Path:
        return GO_DIR / self.module

    def cache_key(self) -> str:
        h = hashlib.sha256()
        for f in ("go.mod", "go.sum"):
            p = self.module_dir / f
            h.update(p.read_bytes() if p.exists() else b"")
        # A wrapper's own Go source (go/coredns/main.go); modules without any hash as before.
        for src in sorted(self.module_dir.glob("*.go")):
            h.update(src.read_bytes())
        h.update(self.package.encode())
        h.update(" ".join(self.ldflags).encode())
        return f"{self.name}-{self.version}-{h.hexdigest()[:10]}"


SPECS: dict[str, BinarySpec] = {
    spec.name: spec
    for spec in (
        BinarySpec(
            "etcd",
            ETCD_VERSION,
            "etcd",
            ".",
            (f"-X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}",),
        ),
        *(
            BinarySpec(
                name,
                KUBE_VERSION,
                "kube",
                f"k8s.io/kubernetes/cmd/{name}",
                _kube_ldflags(KUBE_VERSION),
                ("version", "--client") if name == "kubectl" else ("--version",),
            )
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        ),
        # The real node (tests/cluster/node.py): the same pinned k8s.io/kubernetes, in its own
        # wrapper module so that adding it changed none of the control plane's cache keys.
        *(
            BinarySpec(
                name,
                KUBE_VERSION,
                "kubelet",
                f"k8s.io/kubernetes/cmd/{name}",
                _kube_ldflags(KUBE_VERSION),
            )
            for name in ("kubelet", "kube-proxy")
        ),
        # Cluster DNS for the real node's pods, with only the plugins it uses (go/coredns/main.go).
        BinarySpec(
            "coredns",
            COREDNS_VERSION,
            "coredns",
            ".",
            (f"-X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}",),
            ("-version",),
        ),
        BinarySpec(
            "kwok",
            KWOK_VERSION,
            "kwok",
            "sigs.k8s.io/kwok/cmd/kwok",
            (f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}",),
        ),
        BinarySpec(
            "helm",
            HELM_VERSION,
            "helm",
            "helm.sh/helm/v3/cmd/helm",
            (
                f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                # helm's Makefile sets these from the k8s.io modules it builds against (v0.37).
                "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
                "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
                "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
                "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37",
            ),
            ("version",),
        ),
        # Not a cluster component: prints kstatus's verdict on objects read as JSON (go/kstatus).
        BinarySpec("kstatus", KSTATUS_VERSION, "kstatus", ".", (), ("--help",)),
        # Optional: tests that request the `kueue` fixture start it (tests/cluster/kueue.py).
        BinarySpec(
            "kueue",
            KUEUE_VERSION,
            "kueue",
            "sigs.k8s.io/kueue/cmd/kueue",
            (
                f"-X sigs.k8s.io/kueue/pkg/version.GitVersion={KUEUE_VERSION}",
                f"-X sigs.k8s.io/kueue/pkg/version.GitCommit={KUEUE_VERSION}",
                "-X sigs.k8s.io/kueue/pkg/version.BuildDate=1970-01-01T00:00:00Z",
            ),
            ("--help",),  # the manager has no version flag; it logs gitVersion when it starts
        ),
        # Optional: tests that request the `jobset` fixture start it (tests/cluster/jobset.py).
        BinarySpec(
            "jobset",
            JOBSET_VERSION,
            "jobset",
            "sigs.k8s.io/jobset",
            (
                f"-X sigs.k8s.io/jobset/pkg/version.GitVersion={JOBSET_VERSION}",
                f"-X sigs.k8s.io/jobset/pkg/version.GitCommit={JOBSET_VERSION}",
            ),
            ("--help",),  # like Kueue's manager: no version flag, it logs gitVersion at start
        ),
    )
}

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")
# Built only when a test asks for the real node (tests/cluster/node.py).
NODE = ("kubelet", "kube-proxy", "coredns")


class BinaryError(RuntimeError):
    """A control-plane binary could neither be found nor built."""


def cache_dir() -> Path:
    explicit = os.environ.get("RLAIF_TEST_BIN_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlaif-operator" / "bin"


def how_to_provide(spec: BinarySpec) -> str:
    return (
        f"Provide it with {spec.env_var}=/path/to/{spec.name}"
        + (" or KUBEBUILDER_ASSETS=<dir with envtest binaries>" if spec.name in _ENVTEST else "")
        + f", or build it with `python -m tests.cluster build` (needs Go >= 1.26 and access to the Go"
        f" module proxy; output goes to {cache_dir()})."
    )


_ENVTEST = {"etcd", "kube-apiserver", "kubectl"}


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find(name: str) -> Path | None:
    """Return an existing binary for ``name`` without building, or None."""
    spec = SPECS[name]
    explicit = os.environ.get(spec.env_var)
    if explicit:
        p = Path(explicit).expanduser()
        if not _executable(p):
            raise BinaryError(f"{spec.env_var}={explicit} is not an executable file. {how_to_provide(spec)}")
        return p
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        p = Path(assets).expanduser() / name
        if _executable(p):
            return p
    p = cache_dir() / spec.cache_key()
    if _executable(p):
        return p
    return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[tests.cluster] waiting for another build holding {d / '.build.lock'}", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-mod=readonly -buildvcs=false"
    env["GOWORK"] = "off"
    return env


def _build(spec: BinarySpec, log: Path | None) -> Path:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(f"cannot build {spec.name}: `go` is not on PATH. {how_to_provide(spec)}")
    dest = cache_dir() / spec.cache_key()
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    cmd = [
        go,
        "build",
        "-p",
        os.environ.get("RLAIF_TEST_GO_PARALLELISM", "2"),
        "-trimpath",
        "-ldflags",
        " ".join(("-s", "-w", *spec.ldflags)),
        "-o",
        str(tmp),
        spec.package,
    ]
    print(f"[tests.cluster] building {spec.name} {spec.version} in {spec.module_dir} ...", file=sys.stderr)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log else None
        proc = subprocess.run(
            cmd,
            cwd=spec.module_dir,
            env=go_env(),
            stdout=out if out else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = proc.stdout[-4000:] if proc.stdout else f"(see {log})"
        raise BinaryError(
            f"building {spec.name} {spec.version} failed (exit {proc.returncode}):\n{tail}\n{how_to_provide(spec)}"
        )
    os.replace(tmp, dest)
    print(f"[tests.cluster] built {spec.name} in {time.monotonic() - start:.0f}s -> {dest}", file=sys.stderr)
    return dest


def ensure(
    names: Iterable[str] = CONTROL_PLANE, *, build: bool | None = None, log: Path | None = None
) -> dict[str, Path]:
    """Return paths for ``names``, building the missing ones (unless building is off)."""
    if build is None:
        build = os.environ.get("RLAIF_TEST_NO_BUILD", "") not in ("1", "true", "yes")
    result: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        found = find(name)
        if found is None:
            missing.append(name)
        else:
            result[name] = found
    if not missing:
        return result
    if not build:
        spec = SPECS[missing[0]]
        raise BinaryError(
            f"control-plane binary {spec.name} {spec.version} not found. {how_to_provide(spec)}"
        )
    with _build_lock():
        for name in missing:
            found = find(name)  # another process may have built it while we waited
            result[name] = found if found is not None else _build(SPECS[name], log)
    return result


def version_of(name: str, path: Path) -> str:
    spec = SPECS[name]
    try:
        proc = subprocess.run(
            [str(path), *spec.version_args], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        return f"error: {exc}"
    text = (proc.stdout or proc.stderr).strip()
    return " ".join(text.split())[:200]
