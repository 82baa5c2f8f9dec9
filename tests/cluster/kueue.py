"""Real Kueue (``sigs.k8s.io/kueue``, built from ``go/kueue``) on a running test control plane.

What :meth:`Kueue.start` does, in order:

1. Installs Kueue's CRDs from the pinned module's own ``config/components/crd/bases`` (the Go
   module cache, located with ``go mod download -json``), with the conversion webhooks that
   Kueue's kustomization adds, pointed at the manager on loopback.
2. Creates ``kueue-system`` and the manager's ServiceAccount with Kueue's own RBAC
   (``config/components/rbac``: the manager ClusterRole, its Secret Role, the metrics auth role,
   renamed the way Kueue's kustomization does), and a kubeconfig holding a token of that
   ServiceAccount: the manager runs with exactly the permissions a real install grants it.
3. Registers the webhook configurations of Kueue's own API and of the ``batch/job``
   integration (``config/components/webhook/manifests.yaml``) with ``url:
   https://127.0.0.1:<port>/<path>`` and the caBundle of the webhook CA below.
4. Runs the manager with a config file: integrations ``batch/job``, no ``waitForPodsReady``,
   ``manageJobsWithoutQueueName: false``, every listener on a free loopback port, no leader
   election, the ``VisibilityOnDemand`` aggregated API server off (it would bind a fixed port).
5. Waits for ``/readyz`` and for a ResourceFlavor create to pass the webhooks, and leaves the
   ``default-flavor`` ResourceFlavor in place for :meth:`Kueue.queue`.

Why Kueue's internal certificate management is on, with a certificate made here: with it off,
Kueue v0.17 reads its metrics certificate from the fixed path ``/etc/kueue/metrics/certs``,
which a test must not write. With it on, Kueue keeps the certificate in the Secret
``kueue-webhook-server-cert`` and only regenerates it when it is invalid, so the harness seeds that
Secret with a CA and a serving certificate whose SANs include 127.0.0.1 (Kueue's own would name
only ``kueue-webhook-service.kueue-system.svc``, which the API server cannot reach here). Kueue
stores the CA's private key in that Secret, so it is a CA of its own (``kueue-ca``, the CN
Kueue's rotator checks), not the control plane's CA that signs the admin certificate.

Why the ``batch/job`` webhooks carry an ``objectSelector`` on the queue-name label: the control
plane is shared by the whole test session, and Kueue (``manageJobsWithoutQueueName: false``)
ignores Jobs without that label anyway; the selector keeps the other tests' Jobs (and their
benchmarks and API-server restarts) independent of Kueue being up, as they were before.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from . import binaries
from .certs import sign
from .cluster import Cluster, ClusterError, free_port, write_kubeconfig
from .procs import Process

NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
WEBHOOK_SERVICE = "kueue-webhook-service"  # Kueue derives its cert's DNS name and config names from it
WEBHOOK_SECRET = "kueue-webhook-server-cert"
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"
FLAVOR = "default-flavor"
API = "/apis/kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# The CRDs Kueue's kustomization gives a conversion webhook (config/components/crd/kustomization.yaml),
# and the ones its certificate rotator injects the CA into.
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
# Webhooks kept from manifests.yaml: Kueue's own API and the batch/job integration. The other
# integrations are not enabled, so the manager serves no handler for their paths.
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}
RESOURCES = ("cpu", "memory", "ephemeral-storage", "nvidia.com/gpu")


# --------------------------------------------------------------------------------------------------
# sources: the pinned module's config directory
# --------------------------------------------------------------------------------------------------


def config_dir() -> Path:
    """``config/components`` of the pinned ``sigs.k8s.io/kueue`` module (downloaded if missing)."""
    spec = binaries.SPECS["kueue"]
    explicit = os.environ.get("TEST_ASSET_KUEUE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    go = shutil.which("go")
    if go is None:
        raise binaries.BinaryError(
            "Kueue's CRDs and webhook manifests come from the Go module cache, but `go` is not on "
            "PATH; set TEST_ASSET_KUEUE_CONFIG=<kueue checkout>/config/components instead."
        )
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/kueue@{spec.version}"],
        cwd=spec.module_dir,
        env=binaries.go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise binaries.BinaryError(f"go mod download sigs.k8s.io/kueue failed: {proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"]) / "config" / "components"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --------------------------------------------------------------------------------------------------
# the webhook CA and serving certificate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookCerts:
    ca_cert: bytes
    ca_key: bytes  # PKCS#1 RSA: the form Kueue's rotator (open-policy-agent/cert-controller) parses
    cert: bytes
    key: bytes


def webhook_certs() -> WebhookCerts:
    """A CA named ``kueue-ca`` and a serving certificate for 127.0.0.1 and the webhook service.

    The rotator keeps a Secret's certificates only when they stay valid 90 days ahead and the CA
    verifies for the DNS name ``kueue-ca``, hence the long validity and that SAN."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kueue"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kueue-ca"),
        ]
    )
    ca = sign(
        subject=ca_name,
        public_key=ca_key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        is_ca=True,
        dns=("kueue-ca",),
        validity=_dt.timedelta(days=3650),
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    svc = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
    cert = sign(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, svc)]),
        public_key=key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        server=True,
        dns=(svc, svc + ".cluster.local", "localhost"),
        ips=("127.0.0.1",),
        validity=_dt.timedelta(days=365),
    )

    def pem_key(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    return WebhookCerts(
        ca_cert=ca.public_bytes(serialization.Encoding.PEM),
        ca_key=pem_key(ca_key),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=pem_key(key),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------------
# Kueue
# --------------------------------------------------------------------------------------------------


class Kueue:
    """Kueue's controller-manager on ``cluster``, as one more process in ``cluster.procs``
    (so ``cluster.stop()`` and its startup-failure log report include it).

    >>> kueue = Kueue(cluster).start()
    >>> kueue.queue(namespace, gpus=8)  # a ClusterQueue for that namespace and LocalQueue "default"
    """

    def __init__(self, cluster: Cluster, *, binary: Path | None = None) -> None:
        self.cluster = cluster
        self._binary = binary
        self.dir = cluster.dir / "kueue"
        self.ports: dict[str, int] = {}
        self.certs: WebhookCerts | None = None
        self.startup_seconds = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def process(self) -> Process:
        return self.cluster.procs["kueue"]

    @property
    def running(self) -> bool:
        proc = self.cluster.procs.get("kueue")
        return proc is not None and proc.running

    def start(self, timeout: float = 120.0) -> Kueue:
        t0 = time.monotonic()
        binary = self._binary or binaries.ensure(["kueue"])["kueue"]
        components = config_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {k: free_port() for k in ("webhook", "health", "metrics")}
        self.certs = webhook_certs()
        deadline = time.monotonic() + timeout

        self._install_crds(components, deadline)
        kubeconfig = self._install_identity(components)
        self._register_webhooks(components)
        config = self._write_config()
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        self.cluster.procs["kueue"] = Process(
            "kueue",
            [
                str(binary),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=info",
            ],
            self.cluster.dir / "logs" / "kueue.log",
            env,
        )
        self.process.start()
        self._wait_ready(deadline)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        proc = self.cluster.procs.get("kueue")
        if proc is not None:
            proc.stop()

    def restart(self, downtime: float = 0.0, timeout: float = 60.0) -> None:
        """Stop and start the manager with the same flags (its state lives in the API server)."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        self.process.start()
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        def ready() -> bool:
            if self.process.crashed:
                raise _KueueExited(f"kueue exited with {self.process.returncode}:\n{self.process.tail(60)}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports['health']}/readyz", timeout=2
                ) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._until("kueue /readyz", ready, deadline)
        # Ready means listening; the API server reaching the webhooks (URL, caBundle, certificate)
        # is proven by an object that goes through both of Kueue's webhooks for it.
        self._until("a ResourceFlavor through Kueue's webhooks", self._ensure_flavor, deadline)

    def _ensure_flavor(self) -> bool:
        if self.cluster.get(f"{API}/resourceflavors/{FLAVOR}") is not None:
            # an existing flavor passed the webhooks once; prove they answer now (dry run)
            self.cluster.request(
                "POST",
                f"{API}/resourceflavors?dryRun=All",
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "ResourceFlavor",
                    "metadata": {"name": "probe"},
                },
            )
            return True
        self.cluster.request(
            "POST",
            f"{API}/resourceflavors",
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        )
        return True

    def _until(self, desc: str, fn: Any, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if fn():
                    return
            except _KueueExited:
                raise
            except (ClusterError, OSError, KeyError, TypeError) as exc:
                last = exc
            time.sleep(0.2)
        raise ClusterError(
            f"timed out waiting for {desc}"
            + (f" (last error: {last})" if last else "")
            + f"\n---- kueue log:\n{self.process.tail(60) if 'kueue' in self.cluster.procs else ''}"
        )

    # -- installation ---------------------------------------------------------------------------

    def _apply(self, items: list[dict[str, Any]]) -> None:
        """Server-side apply of ``items`` in one List, as the harness's field manager."""
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=rlaif-tests",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def _install_crds(self, components: Path, deadline: float) -> None:
        assert self.certs is not None
        crds: list[dict[str, Any]] = []
        for path in sorted((components / "crd" / "bases").glob("*.yaml")):
            for crd in _documents(path):
                if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
                    crd["spec"]["conversion"] = {
                        "strategy": "Webhook",
                        "webhook": {
                            "clientConfig": {
                                "url": f"https://127.0.0.1:{self.ports['webhook']}/convert",
                                "caBundle": _b64(self.certs.ca_cert),
                            },
                            "conversionReviewVersions": ["v1"],
                        },
                    }
                crds.append(crd)
        # server-side: the CRDs are too large for client-side apply's last-applied annotation
        self._apply(crds)
        names = [c["metadata"]["name"] for c in crds]

        def established() -> bool:
            for name in names:
                crd = self.cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conds = {
                    c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []
                }
                if conds.get("Established") != "True":
                    return False
            return True

        self._until("Kueue's CRDs established", established, deadline)

    def _install_identity(self, components: Path) -> Path:
        assert self.certs is not None
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
        manifests: list[dict[str, Any]] = []
        for stem in (
            "role",
            "role_binding",
            "manager_secrets_role",
            "manager_secrets_role_binding",
            "metrics_auth_role",
            "metrics_auth_role_binding",
        ):
            manifests += [_as_installed(d) for d in _documents(rbac / f"{stem}.yaml")]
        self._apply(manifests)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
            "data": {
                "ca.crt": _b64(self.certs.ca_cert),
                "ca.key": _b64(self.certs.ca_key),
                "tls.crt": _b64(self.certs.cert),
                "tls.key": _b64(self.certs.key),
            },
        }
        path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        if c.get(f"{path}/{WEBHOOK_SECRET}") is None:
            c.request("POST", path, secret)
        else:
            c.request("PUT", f"{path}/{WEBHOOK_SECRET}", secret)
        token = c.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 86400},
            },
        )["status"]["token"]
        kubeconfig = self.dir / "kueue.kubeconfig"
        # Start from the admin kubeconfig for the cluster entry, then swap the user for the token.
        write_kubeconfig(kubeconfig, c.server, c.pki.ca.cert, c.pki.admin, SERVICE_ACCOUNT)
        cfg = yaml.safe_load(kubeconfig.read_text())
        cfg["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
        kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        kubeconfig.chmod(0o600)
        return kubeconfig

    def _register_webhooks(self, components: Path) -> None:
        assert self.certs is not None
        for doc in _documents(components / "webhook" / "manifests.yaml"):
            kind = doc["kind"]
            name = MUTATING if kind == "MutatingWebhookConfiguration" else VALIDATING
            hooks = []
            for hook in doc["webhooks"]:
                groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
                if not groups <= WEBHOOK_GROUPS:
                    continue
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.ports['webhook']}{path}",
                    "caBundle": _b64(self.certs.ca_cert),
                }
                if groups == {"batch"}:
                    hook["objectSelector"] = {
                        "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
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

    def _write_config(self) -> Path:
        assert self.certs is not None
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        # What the kubelet would do with the Secret volume in a Kueue Deployment: the rotator waits
        # until the certificate is "mounted" in certDir, and the webhook server serves from there.
        for name, data in (
            ("ca.crt", self.certs.ca_cert),
            ("tls.crt", self.certs.cert),
            ("tls.key", self.certs.key),
        ):
            (certs / name).write_bytes(data)
        (certs / "tls.key").chmod(0o600)
        cfg = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}"},
            "webhook": {"port": self.ports["webhook"], "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": WEBHOOK_SERVICE,
                "webhookSecretName": WEBHOOK_SECRET,
            },
            "manageJobsWithoutQueueName": False,
            "clientConnection": {"qps": 100, "burst": 200},
            "integrations": {"frameworks": ["batch/job"]},
        }
        path = self.dir / "kueue-config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    # -- queues ---------------------------------------------------------------------------------

    def queue(
        self,
        namespace: str,
        name: str = "default",
        *,
        gpus: int = 8,
        cpu: str = "1000",
        memory: str = "4Ti",
        cluster_queue: str | None = None,
        preemption: dict[str, Any] | None = None,
    ) -> str:
        """A ClusterQueue admitting only ``namespace`` (quota ``gpus`` nvidia.com/gpu, plenty of
        cpu, memory and ephemeral-storage) and LocalQueue ``name`` pointing at it; returns ``name``.

        Two LocalQueues can share one ClusterQueue by passing the same ``cluster_queue``; the
        ClusterQueue is created once. Default preemption: lower-priority workloads in the same
        ClusterQueue may be preempted."""
        cq = cluster_queue or f"{namespace}-cq"[:63]
        if self.cluster.get(f"{API}/clusterqueues/{cq}") is None:
            quota = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Ti", "nvidia.com/gpu": str(gpus)}
            self.cluster.request(
                "POST",
                f"{API}/clusterqueues",
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "ClusterQueue",
                    "metadata": {"name": cq, "labels": {"rlaif.dev/test": "true"}},
                    "spec": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                        "preemption": preemption or {"withinClusterQueue": "LowerPriority"},
                        "resourceGroups": [
                            {
                                "coveredResources": list(RESOURCES),
                                "flavors": [
                                    {
                                        "name": FLAVOR,
                                        "resources": [
                                            {"name": r, "nominalQuota": quota[r]} for r in RESOURCES
                                        ],
                                    }
                                ],
                            }
                        ],
                    },
                },
            )
        self.cluster.request(
            "POST",
            f"{API}/namespaces/{namespace}/localqueues",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": cq},
            },
        )
        self.cluster.wait_for(
            f"LocalQueue {namespace}/{name} active",
            lambda: _active(self.cluster.get(f"{API}/namespaces/{namespace}/localqueues/{name}")),
            timeout=30,
        )
        return name

    def delete_cluster_queues(self, namespace: str) -> None:
        """Delete the ClusterQueues :meth:`queue` made for ``namespace`` (cluster-scoped, so the
        namespace's deletion does not take them)."""
        items = (self.cluster.get(f"{API}/clusterqueues") or {}).get("items", [])
        for cq in items:
            sel = cq["spec"].get("namespaceSelector", {}).get("matchLabels", {})
            if sel.get("kubernetes.io/metadata.name") == namespace:
                with contextlib.suppress(ClusterError):
                    self.cluster.request("DELETE", f"{API}/clusterqueues/{cq['metadata']['name']}")

    def priority_class(self, name: str, value: int) -> str:
        """A scheduling.k8s.io PriorityClass (what Kueue reads from a Job's pod template's
        ``priorityClassName``); created once per cluster."""
        path = "/apis/scheduling.k8s.io/v1/priorityclasses"
        if self.cluster.get(f"{path}/{name}") is None:
            self.cluster.request(
                "POST",
                path,
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name, "labels": {"rlaif.dev/test": "true"}},
                    "value": value,
                    "preemptionPolicy": "PreemptLowerPriority",
                },
            )
        return name

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (self.cluster.get(f"{API}/namespaces/{namespace}/workloads") or {}).get(
            "items", []
        )
        return items

    def metrics(self) -> str:
        """Kueue's /metrics, read as the admin (the endpoint checks authn/authz like in a cluster)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # controller-runtime's self-signed metrics certificate
        token = self._admin_token()
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.ports['metrics']}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return str(resp.read().decode())

    def _admin_token(self) -> str:
        token: str = self.cluster.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 600},
            },
        )["status"]["token"]
        return token


class _KueueExited(ClusterError):
    """The manager process ended while the harness waited for it."""


def _active(lq: dict[str, Any] | None) -> bool:
    conds = (lq or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Active" and c.get("status") == "True" for c in conds)


def _as_installed(doc: dict[str, Any]) -> dict[str, Any]:
    """What Kueue's kustomization (namePrefix ``kueue-``, namespace ``kueue-system``) makes of one
    RBAC manifest."""
    doc = json.loads(json.dumps(doc))
    meta = doc["metadata"]
    meta["name"] = "kueue-" + meta["name"]
    if "namespace" in meta:
        meta["namespace"] = NAMESPACE
    if "roleRef" in doc:
        doc["roleRef"]["name"] = "kueue-" + doc["roleRef"]["name"]
    for subject in doc.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["name"] = SERVICE_ACCOUNT
            subject["namespace"] = NAMESPACE
    return doc


@contextlib.contextmanager
def running_kueue(cluster: Cluster) -> Iterator[Kueue]:
    k = Kueue(cluster).start()
    try:
        yield k
    finally:
        k.stop()
