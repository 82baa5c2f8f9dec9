"""Pytest fixtures and hook for the local control plane; import them into a conftest.py:

    from tests.cluster.fixtures import cluster, namespace, pytest_collection_finish  # noqa: F401

* ``cluster`` (session): one control plane per test session; ``KUBECONFIG`` points at its
  admin kubeconfig for the whole session (kopf, the kubernetes client and kubectl pick it up).
* ``namespace`` (function): a fresh namespace (with its ``default`` ServiceAccount ready),
  deleted afterwards.
* ``pytest_collection_finish``: builds/locates the binaries before the first test runs, so a
  cold build (~15 min) is not charged to one test's timeout.

If a binary can be neither found nor built, every test that uses ``cluster`` fails (never
skips) with a message naming the binary and how to provide it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator

import pytest

from . import images, node
from .binaries import NODE, SPECS, BinaryError, ensure
from .cluster import Cluster, ClusterError
from .jobset import JobSet
from .kueue import Kueue

_binaries: dict[str, object] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build/locate the binaries once collection shows that a test needs the control plane.

    A cold build takes ~15 minutes on 2 cores; doing it here (with live progress on the
    terminal) keeps it out of the first test's pytest-timeout budget.
    """
    if _binaries:  # imported by more than one conftest: each registers this hook
        return
    fixtures = [set(getattr(item, "fixturenames", ())) for item in session.items]
    wants_node = any("node_cluster" in f for f in fixtures)
    if session.config.option.collectonly or not any({"cluster", "node_cluster"} & f for f in fixtures):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        try:
            # The real node's kubelet and kube-proxy only when a test asks for the real node.
            _binaries["paths"] = ensure([n for n in SPECS if wants_node or n not in NODE])
        except BinaryError as exc:
            _binaries["error"] = exc
        if wants_node and "error" not in _binaries:
            _build_images()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if "error" in _binaries:
        pytest.fail(f"Kubernetes test control plane unavailable: {_binaries['error']}", pytrace=False)
    c = Cluster()
    try:
        c.start()
    except BinaryError as exc:
        pytest.fail(f"Kubernetes test control plane unavailable: {exc}", pytrace=False)
    except ClusterError as exc:
        pytest.fail(f"Kubernetes test control plane failed to start: {exc}", pytrace=False)
    print(f"\n[tests.cluster] control plane up in {c.startup_seconds:.1f}s, KUBECONFIG={c.kubeconfig}")
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(c.kubeconfig)
    # The kubernetes client reads KUBECONFIG once, at import; a test module collected earlier may
    # have imported it already, and kopf's login_via_client would then look in ~/.kube/config.
    kube_config = sys.modules.get("kubernetes.config.kube_config")
    old_default = getattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", None)
    if kube_config is not None:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(c.kubeconfig)
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        if kube_config is not None:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old_default
        c.stop()


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Iterator[Kueue]:
    """Real Kueue on the session's control plane (tests/cluster/kueue.py), started by the first
    test that asks for it; it then stays up for the session and only acts on labelled Jobs."""
    k = Kueue(cluster)
    try:
        k.start()
    except (BinaryError, ClusterError) as exc:
        pytest.fail(f"Kueue unavailable: {exc}", pytrace=False)
    print(f"\n[tests.cluster] kueue up in {k.startup_seconds:.1f}s")
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="session")
def jobset(cluster: Cluster) -> Iterator[JobSet]:
    """Real JobSet on the session's control plane (tests/cluster/jobset.py), started by the first
    test that asks for it; it then stays up for the session (it acts on JobSets and their pods only)."""
    js = JobSet(cluster)
    try:
        js.start()
    except (BinaryError, ClusterError) as exc:
        pytest.fail(f"JobSet unavailable: {exc}", pytrace=False)
    print(f"\n[tests.cluster] jobset up in {js.startup_seconds:.1f}s")
    try:
        yield js
    finally:
        js.stop()


def create_namespace(
    cluster: Cluster,
    name: str,
    labels: dict[str, str] | None = None,
    *,
    wait_for_default_service_account: bool = False,
) -> None:
    """A namespace labelled as the tests'; pods can be created in it once its default
    ServiceAccount exists, which the controller manager adds moments later."""
    cluster.request(
        "POST",
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"rlaif.dev/test": "true", **(labels or {})}},
        },
    )
    if wait_for_default_service_account:
        cluster.wait_for(
            f"ServiceAccount {name}/default",
            lambda: cluster.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout=30,
        )


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, name, wait_for_default_service_account=True)
    try:
        yield name
    finally:
        if not cluster.procs["kube-apiserver"].running:  # a fault-injection test left it stopped
            cluster.start_apiserver()
        # Background deletion: the namespace controller and kwok clean up while tests go on.
        cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def _build_images() -> None:
    """The Dockerfile's operator and trainer images and the pause image (a cold build takes ~10
    minutes: debootstrap, torch from PyPI, the trainer's dependencies and its baked model)."""
    try:
        log = images.cache_root() / "images" / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[tests.cluster] building or locating the images (log: {log})", file=sys.stderr)
        _images.update(images.build(("pause", "operator", "trainer"), log=log))
    except images.ImageError as exc:
        _image_error.append(exc)  # fails the real-node tests only, not the kwok ones


_images: dict[str, images.Image] = {}
_image_error: list[images.ImageError] = []


@pytest.fixture(scope="package")
def node_cluster() -> Iterator[Cluster]:
    """A control plane with the real kubelet node (no kwok nodes) and the project's images in its
    containerd (``node_cluster.node.loaded`` maps operator/trainer to their references). Package
    scope: it stops once the package that imports it (tests/e2e) is done, so it does not idle
    beside the kwok control plane through the integration tests."""
    if "error" in _binaries:
        pytest.fail(f"real test node unavailable: {_binaries['error']}", pytrace=False)
    missing = node.missing_tools()
    if missing:
        pytest.fail(
            f"real test node unavailable: {', '.join(missing)} missing; run scripts/install-node-deps.sh",
            pytrace=False,
        )
    c = Cluster(nodes=0, real_node=True, startup_timeout=240)
    try:
        c.start()
        assert c.node is not None
        if not _images and not _image_error:
            _build_images()
        if _image_error:
            raise _image_error[0]
        images.import_into(
            c.node, [_images["operator"], _images["trainer"]], log=c.dir / "logs" / "images.log"
        )
    except (BinaryError, ClusterError, images.ImageError, node.NodeError) as exc:
        c.stop()
        pytest.fail(f"real test node failed to start: {exc}", pytrace=False)
    c.node.loaded.update(_images)
    print(
        f"\n[tests.cluster] real node {c.node.name} Ready in {c.startup_seconds:.1f}s, KUBECONFIG={c.kubeconfig}"
    )
    try:
        yield c
    finally:
        c.stop()
