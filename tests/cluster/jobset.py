"""Real JobSet (``sigs.k8s.io/jobset``, built from ``go/jobset``) on a running test control plane.

What :meth:`JobSet.start` does, in order:

1. Installs the JobSet CRD from the pinned module's own ``config/components/crd/bases`` (the Go
   module cache, located with ``go mod download -json``; ``TEST_ASSET_JOBSET_CONFIG=<dir>`` names
   a ``config/components`` directory instead). JobSet serves one version (v1alpha2), so the
   conversion webhook its kustomization adds has nothing to convert and is left out.
2. Creates ``jobset-system`` and the manager's ServiceAccount with JobSet's own manager
   ClusterRole (``config/components/rbac/role.yaml``, renamed as its kustomization does) and a
   kubeconfig holding a token of that ServiceAccount: the manager runs with exactly the
   permissions a real install grants it.
3. Registers JobSet's webhook configurations (``config/components/webhook/manifests.yaml``, with
   the pod webhooks' ``objectSelector`` from its kustomize patches, so only JobSet pods go through
   them) with ``url: https://127.0.0.1:<port>/<path>`` and the control plane's CA as caBundle.
4. Runs the manager with a config file: every listener on a free loopback port, no leader
   election, and internal certificate management off, with a serving certificate issued here by the
   control plane's CA in ``certDir``.
5. Waits for ``/readyz`` and for a server-side dry-run JobSet create to pass the webhooks.

Why internal certificate management is off (Kueue's harness keeps it on): JobSet v0.12's rotator
writes its certificates to the fixed path ``/tmp/k8s-webhook-server/serving-certs``, shared by every
test session on the machine; with it off, the webhook and metrics servers read from the
configurable ``certDir`` below, and nothing else depends on the rotator.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from . import binaries, certs
from .cluster import Cluster, ClusterError, free_port, write_kubeconfig
from .procs import Process

NAMESPACE = "jobset-system"
SERVICE_ACCOUNT = "jobset-controller-manager"
WEBHOOK_SERVICE = "jobset-webhook-service"
MUTATING = "jobset-mutating-webhook-configuration"
VALIDATING = "jobset-validating-webhook-configuration"
API_VERSION = "jobset.x-k8s.io/v1alpha2"
API = "/apis/" + API_VERSION
CRD_NAME = "jobsets.jobset.x-k8s.io"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"


def config_dir() -> Path:
    """``config/components`` of the pinned ``sigs.k8s.io/jobset`` module (downloaded if missing)."""
    explicit = os.environ.get("TEST_ASSET_JOBSET_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    spec = binaries.SPECS["jobset"]
    go = shutil.which("go")
    if go is None:
        raise binaries.BinaryError(
            "JobSet's CRD and webhook manifests come from the Go module cache, but `go` is not on "
            "PATH; set TEST_ASSET_JOBSET_CONFIG=<jobset checkout>/config/components instead."
        )
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/jobset@{spec.version}"],
        cwd=spec.module_dir,
        env=binaries.go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise binaries.BinaryError(f"go mod download sigs.k8s.io/jobset failed: {proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"]) / "config" / "components"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class JobSet:
    """JobSet's controller-manager on ``cluster``, as one more process in ``cluster.procs`` (so
    ``cluster.stop()`` and its startup-failure log report include it).

    >>> jobset = JobSet(cluster).start()
    >>> jobset.uninstall_crd()  # the "no JobSet in this cluster" case; start() installs it again
    """

    def __init__(self, cluster: Cluster, *, binary: Path | None = None) -> None:
        self.cluster = cluster
        self._binary = binary
        self.dir = cluster.dir / "jobset"
        self.ports: dict[str, int] = {}
        self.startup_seconds = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def process(self) -> Process:
        return self.cluster.procs["jobset"]

    @property
    def running(self) -> bool:
        proc = self.cluster.procs.get("jobset")
        return proc is not None and proc.running

    def start(self, timeout: float = 120.0) -> JobSet:
        t0 = time.monotonic()
        binary = self._binary or binaries.ensure(["jobset"])["jobset"]
        components = config_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {k: free_port() for k in ("webhook", "health", "metrics")}
        deadline = time.monotonic() + timeout
        cert_dir = self._serving_cert()
        self.install_crd(components, deadline)
        kubeconfig = self._install_identity(components)
        self._register_webhooks(components)
        config = self._write_config(cert_dir)
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        self.cluster.procs["jobset"] = Process(
            "jobset",
            [str(binary), f"--config={config}", f"--kubeconfig={kubeconfig}", "--zap-devel=false"],
            self.cluster.dir / "logs" / "jobset.log",
            env,
        )
        self.process.start()
        self._wait_ready(deadline)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        proc = self.cluster.procs.get("jobset")
        if proc is not None:
            proc.stop()

    def _wait_ready(self, deadline: float) -> None:
        def ready() -> bool:
            if self.process.crashed:
                raise _JobSetExited(f"jobset exited with {self.process.returncode}:\n{self.process.tail(60)}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports['health']}/readyz", timeout=2
                ) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._until("jobset /readyz", ready, deadline)
        # Ready means listening; the API server reaching the webhooks (URL, caBundle, certificate)
        # is proven by a JobSet that goes through both of them (a dry run: nothing is stored).
        self._until("a JobSet dry run through JobSet's webhooks", self._probe, deadline)

    def _probe(self) -> bool:
        self.cluster.request("POST", f"{API}/namespaces/default/jobsets?dryRun=All", probe_jobset())
        return True

    def _until(self, desc: str, fn: Any, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if fn():
                    return
            except _JobSetExited:
                raise
            except (ClusterError, OSError, KeyError, TypeError) as exc:
                last = exc
            time.sleep(0.2)
        raise ClusterError(
            f"timed out waiting for {desc}"
            + (f" (last error: {last})" if last else "")
            + f"\n---- jobset log:\n{self.process.tail(60) if 'jobset' in self.cluster.procs else ''}"
        )

    # -- installation ---------------------------------------------------------------------------

    def install_crd(self, components: Path | None = None, deadline: float | None = None) -> None:
        components = components or config_dir()
        deadline = deadline or time.monotonic() + 60
        crds = [d for p in sorted((components / "crd" / "bases").glob("*.yaml")) for d in _documents(p)]
        # server-side: the CRD is too large for client-side apply's last-applied annotation
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=rlaif-tests",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}),
        )

        def established() -> bool:
            crd = self.cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
            conds = {
                c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []
            }
            # ... and served: discovery lists it only once the API server's handler is installed
            return conds.get("Established") == "True" and self.cluster.get(API) is not None

        self._until("the JobSet CRD established", established, deadline)

    def uninstall_crd(self, timeout: float = 60.0) -> None:
        """Delete the JobSet CRD (and with it every JobSet) and wait until the API is gone."""
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
        with contextlib.suppress(ClusterError):
            self.cluster.request("DELETE", path)
        self.cluster.wait_for(
            "the JobSet CRD deleted",
            lambda: self.cluster.get(path) is None and self.cluster.get(API) is None,
            timeout=timeout,
        )

    def _serving_cert(self) -> Path:
        """A serving certificate for 127.0.0.1 from the control plane's CA (the caBundle of the
        webhooks), written as ``tls.crt``/``tls.key`` where controller-runtime looks for them."""
        cert_dir = self.dir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        svc = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
        pair = certs.issue(
            self.cluster.pki.ca,
            cert_dir,
            "tls",
            svc,
            server=True,
            dns=(svc, "localhost"),
            ips=("127.0.0.1",),
        )
        assert pair.cert.name == "tls.crt" and pair.key.name == "tls.key"
        return cert_dir

    def _install_identity(self, components: Path) -> Path:
        c = self.cluster
        if c.get(f"/api/v1/namespaces/{NAMESPACE}") is None:
            c.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        if c.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}") is None:
            c.request(
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
                {"metadata": {"name": SERVICE_ACCOUNT}},
            )
        rbac = components / "rbac"
        manifests = [
            _as_installed(d) for stem in ("role", "role_binding") for d in _documents(rbac / f"{stem}.yaml")
        ]
        c.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=rlaif-tests",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        )
        token = c.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 86400},
            },
        )["status"]["token"]
        kubeconfig = self.dir / "jobset.kubeconfig"
        write_kubeconfig(kubeconfig, c.server, c.pki.ca.cert, c.pki.admin, SERVICE_ACCOUNT)
        cfg = yaml.safe_load(kubeconfig.read_text())
        cfg["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
        kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        kubeconfig.chmod(0o600)
        return kubeconfig

    def _register_webhooks(self, components: Path) -> None:
        ca_bundle = _b64(self.cluster.pki.ca.cert.read_bytes())
        for doc in _documents(components / "webhook" / "manifests.yaml"):
            kind = doc["kind"]
            name = MUTATING if kind == "MutatingWebhookConfiguration" else VALIDATING
            hooks = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.ports['webhook']}{path}",
                    "caBundle": ca_bundle,
                }
                groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
                if groups == {""}:  # the pod webhooks: JobSet's kustomize patches limit them to its pods
                    hook["objectSelector"] = {
                        "matchExpressions": [{"key": JOBSET_NAME_LABEL, "operator": "Exists"}]
                    }
                hook["timeoutSeconds"] = 10
                hooks.append(hook)
            body = {
                "apiVersion": doc["apiVersion"],
                "kind": kind,
                "metadata": {"name": name},
                "webhooks": hooks,
            }
            base = f"/apis/admissionregistration.k8s.io/v1/{kind.lower()}s"
            if self.cluster.get(f"{base}/{name}") is not None:
                self.cluster.request("DELETE", f"{base}/{name}")
            self.cluster.request("POST", base, body)

    def _write_config(self, cert_dir: Path) -> Path:
        cfg = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}", "certDir": str(cert_dir)},
            "webhook": {"port": self.ports["webhook"], "host": "127.0.0.1", "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "clientConnection": {"qps": 100, "burst": 200},
        }
        path = self.dir / "jobset-config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


class _JobSetExited(ClusterError):
    """The manager process ended while the harness waited for it."""


def probe_jobset() -> dict[str, Any]:
    """The smallest valid JobSet: one replicated Job of one busybox pod."""
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": "probe"},
        "spec": {
            "replicatedJobs": [
                {
                    "name": "node",
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "template": {
                                "spec": {
                                    "restartPolicy": "Never",
                                    "containers": [{"name": "c", "image": "busybox"}],
                                }
                            }
                        }
                    },
                }
            ]
        },
    }


def _as_installed(doc: dict[str, Any]) -> dict[str, Any]:
    """What JobSet's kustomization (namePrefix ``jobset-``, namespace ``jobset-system``) makes of one
    RBAC manifest."""
    doc = json.loads(json.dumps(doc))
    meta = doc["metadata"]
    meta["name"] = "jobset-" + meta["name"]
    if "namespace" in meta:
        meta["namespace"] = NAMESPACE
    if "roleRef" in doc:
        doc["roleRef"]["name"] = "jobset-" + doc["roleRef"]["name"]
    for subject in doc.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["name"] = SERVICE_ACCOUNT
            subject["namespace"] = NAMESPACE
    return doc


@contextlib.contextmanager
def running_jobset(cluster: Cluster) -> Iterator[JobSet]:
    js = JobSet(cluster).start()
    try:
        yield js
    finally:
        js.stop()
