"""A real Kubernetes control plane as local processes: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake GPU nodes and pod lifecycles).

Security choices (documented in README.md next to this file):

* TLS everywhere with a throw-away CA; admin is a ``system:masters`` client certificate.
* ``--authorization-mode=Node,RBAC`` and the apiserver's *default* admission plugins,
  including ``ServiceAccount`` and ``PodSecurity``; nothing is disabled. The ServiceAccount
  admission works because kube-controller-manager runs the ``serviceaccount`` and
  ``serviceaccount-token`` controllers with the generated signing key, and
  ``--use-service-account-credentials`` so each controller acts with its own RBAC role.
* ``--endpoint-reconciler-type=none``: the apiserver advertises 127.0.0.1, which Endpoints
  validation rejects, so the ``kubernetes`` Service endpoints are not reconciled.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from . import binaries, certs
from .node import BRIDGE_IP, RealNode
from .procs import Process

STAGES_FILE = Path(__file__).resolve().parent / "stages.yaml"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


class ClusterError(RuntimeError):
    """The control plane failed to start or a component died."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike CalledProcessError, str() includes kubectl's stderr."""

    def __str__(self) -> str:
        args = self.cmd[3:] if isinstance(self.cmd, list) else self.cmd
        return f"kubectl {' '.join(map(str, args))} exited {self.returncode}: {(self.stderr or self.stdout or '').strip()}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, client: certs.CertPair, user: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "rlaif-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "rlaif-test", "context": {"cluster": "rlaif-test", "user": user}}],
        "current-context": "rlaif-test",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


# --- process-wide cleanup ---------------------------------------------------------------

_live: set[Cluster] = set()  # strong refs: a started, unreferenced Cluster must still be stopped
_handlers_installed = False


def _stop_all() -> None:
    for c in list(_live):
        with contextlib.suppress(Exception):
            c.stop()


def _on_signal(signum: int, frame: Any) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_signal)


# --- the cluster ------------------------------------------------------------------------


class Cluster:
    """A local control plane.

    >>> with Cluster() as c:
    ...     c.kubectl("get", "nodes")

    Attributes: ``kubeconfig`` (admin kubeconfig path), ``server`` (https URL),
    ``cert_dir``, ``dir`` (temp dir with logs, data and configs), ``binaries``.
    """

    def __init__(
        self,
        *,
        nodes: int = 2,
        gpus_per_node: int = 8,
        node_cpu: str = "128",
        node_memory: str = "1Ti",
        node_pods: int = 500,
        workdir: Path | None = None,
        keep_dir: bool = False,
        startup_timeout: float = 120.0,
        bins: Mapping[str, Path] | None = None,
        verbosity: int = 1,
        real_node: bool = False,
        pod_cidr: str = "10.244.0.1/16",
    ) -> None:
        self.node_count = nodes
        # kwok's pod IPs; a benchmark gives 127.0.0.1/16 so that every fake pod's IP reaches one
        # real process on loopback (benchmarks/bench_operator.py --progress-scrape-seconds)
        self.pod_cidr = pod_cidr
        self.gpus_per_node = gpus_per_node
        self.node_cpu = node_cpu
        self.node_memory = node_memory
        self.node_pods = node_pods
        self.startup_timeout = startup_timeout
        self.verbosity = verbosity
        self.service_cidr = SERVICE_CIDR
        # A real kubelet node (node.py) beside the kwok ones; the apiserver then listens on the
        # node bridge's address so that pods reach it through the `kubernetes` Service.
        self.real_node = real_node
        self.node: RealNode | None = None
        self.host = "127.0.0.1"
        self._given_dir = workdir
        self.keep_dir = keep_dir or workdir is not None
        self._bins = dict(bins) if bins else None
        self.dir: Path = Path()
        self.cert_dir: Path = Path()
        self.kubeconfig: Path = Path()
        self.server = ""
        self.binaries: dict[str, Path] = {}
        self.procs: dict[str, Process] = {}
        self.started = False
        self.startup_seconds = 0.0
        self.timings: dict[str, float] = {}  # seconds spent in each startup/restart wait
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.RLock()

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        with self._lock:
            if self.started:
                return self
            t0 = time.monotonic()
            self.binaries = self._bins or binaries.ensure(binaries.CONTROL_PLANE)
            if self.real_node:
                self.binaries.update(binaries.ensure(binaries.NODE))
            _install_cleanup()
            attempts = 3
            for attempt in range(1, attempts + 1):
                if self._given_dir is not None:
                    self.dir = self._given_dir
                    # Every start is a fresh cluster: old etcd data and PKI would not match.
                    for stale in ("etcd", "pki"):
                        shutil.rmtree(self.dir / stale, ignore_errors=True)
                    self.dir.mkdir(parents=True, exist_ok=True)
                else:
                    self.dir = Path(tempfile.mkdtemp(prefix="rlaif-cluster-"))
                (self.dir / "logs").mkdir(exist_ok=True)
                self.cert_dir = self.dir / "pki"
                self.procs = {}
                _live.add(self)
                try:
                    self._start(t0)
                    return self
                except ClusterError as exc:
                    report = self.log_report()
                    self.stop()
                    # free_port() can race with another process grabbing the port; retry then.
                    if "address already in use" in report and attempt < attempts:
                        print(f"[tests.cluster] port clash, retrying ({exc})", file=sys.stderr)
                        continue
                    print(report, file=sys.stderr)
                    raise ClusterError(f"{exc}\n{report}") from None
                except BaseException:
                    self.stop()
                    raise
            raise AssertionError("unreachable")

    def _start(self, t0: float) -> None:
        if self.real_node:
            self.node = RealNode(self)
            self.node.prepare()
            self.host = BRIDGE_IP
        extra_ips = (BRIDGE_IP,) if self.real_node else ()
        self.pki = certs.generate(self.cert_dir, service_ip=SERVICE_IP, extra_ips=extra_ips)
        if self.real_node:  # the apiserver's identity towards the kubelet API (logs, exec)
            self.kubelet_client = certs.issue(
                self.pki.ca, self.cert_dir, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                ("system:masters",), client=True,
            )  # fmt: skip
        ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
        self.ports = ports
        self.server = f"https://{self.host}:{ports['apiserver']}"
        self.kubeconfig = write_kubeconfig(
            self.dir / "admin.kubeconfig", self.server, self.pki.ca.cert, self.pki.admin, "admin"
        )
        kcm_kc = write_kubeconfig(
            self.dir / "kube-controller-manager.kubeconfig",
            self.server,
            self.pki.ca.cert,
            self.pki.controller_manager,
            "system:kube-controller-manager",
        )
        sched_kc = write_kubeconfig(
            self.dir / "kube-scheduler.kubeconfig",
            self.server,
            self.pki.ca.cert,
            self.pki.scheduler,
            "system:kube-scheduler",
        )
        kwok_kc = write_kubeconfig(
            self.dir / "kwok.kubeconfig", self.server, self.pki.ca.cert, self.pki.kwok, "kwok"
        )
        self._ssl = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        self._ssl.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))

        self._add("etcd", self._etcd_args())
        self._add("kube-apiserver", self._apiserver_args())
        self._add("kube-controller-manager", self._kcm_args(kcm_kc))
        self._add("kube-scheduler", self._scheduler_args(sched_kc))
        self._add("kwok", self._kwok_args(kwok_kc))

        deadline = time.monotonic() + self.startup_timeout
        self.procs["etcd"].start()
        self.procs["kube-apiserver"].start()
        self._wait("kube-apiserver /readyz", self._apiserver_ready, deadline)
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self.procs[name].start()
        self.add_nodes(self.node_count)
        self._wait("kwok nodes Ready and untainted", lambda: self._nodes_ready(self.node_count), deadline)
        self._wait(
            "kube-scheduler /healthz",
            lambda: _https_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz"),
            deadline,
        )
        self._wait(
            "kube-controller-manager /healthz",
            lambda: _https_ok(f"https://127.0.0.1:{ports['kcm']}/healthz"),
            deadline,
        )
        self._wait(
            "ServiceAccount default/default (serviceaccount controller)",
            lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
            deadline,
        )
        if self.node is not None:
            self.node.start(self.binaries, time.monotonic() + self.startup_timeout)
        self.started = True
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop every component (the API server and etcd last) and remove the temp dir."""
        with self._lock:
            if self.node is not None:
                with contextlib.suppress(Exception):
                    self.node.stop()  # drains its pods first, then kube-proxy, kubelet, containerd
                self.node = None
            # The controllers (and kwok) stop together, so a loaded machine's teardown takes the
            # slowest one's grace period rather than the sum of them all; the API server and then
            # etcd go last, because the others' graceful shutdown still talks to them.
            last = [name for name in ("kube-apiserver", "etcd") if name in self.procs]
            self._stop_together([name for name in reversed(list(self.procs)) if name not in last])
            for name in last:
                self._stop_quietly(name)
            self.started = False
            _live.discard(self)
            if self.dir != Path() and not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_together(self, names: list[str]) -> None:
        # Plain threads, not an executor: stop() also runs from atexit, where concurrent.futures
        # refuses new work ("cannot schedule new futures after interpreter shutdown").
        threads = []
        for name in names:
            thread = threading.Thread(
                target=self._stop_quietly, args=(name,), name=f"stop-{name}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # no new threads this late in shutdown: stop it here instead
                self._stop_quietly(name)
                continue
            threads.append(thread)
        for thread in threads:
            thread.join()

    def _stop_quietly(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.procs[name].stop()

    # -- the API server alone (fault-tolerance tests) -----------------------------------

    def stop_apiserver(self, *, graceful: bool = True) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL for a crash); the other components keep
        running and retry until it is back."""
        self.stop_component("kube-apiserver", graceful=graceful)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port and wait for /readyz."""
        self.start_component("kube-apiserver", timeout=timeout)

    def restart_apiserver(self, downtime: float = 0.0, *, graceful: bool = True) -> None:
        self.stop_apiserver(graceful=graceful)
        if downtime:
            time.sleep(downtime)
        self.start_apiserver()

    def stop_component(self, name: str, *, graceful: bool = True) -> None:
        """Stop one of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok."""
        self.procs[name].stop(graceful=graceful)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped component with its original flags and wait until it is healthy."""
        self.procs[name].start()
        checks: dict[str, Callable[[], bool]] = {
            "kube-apiserver": self._apiserver_ready,
            "kube-controller-manager": lambda: _https_ok(f"https://127.0.0.1:{self.ports['kcm']}/healthz"),
            "kube-scheduler": lambda: _https_ok(f"https://127.0.0.1:{self.ports['scheduler']}/healthz"),
            "kwok": lambda: _http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"),
        }
        if name in checks:
            self._wait(f"{name} healthy after restart", checks[name], time.monotonic() + timeout)

    # -- nodes --------------------------------------------------------------------------

    def node_manifest(self, name: str, index: int = 0) -> dict[str, Any]:
        resources = {
            "cpu": self.node_cpu,
            "memory": self.node_memory,
            "pods": str(self.node_pods),
            "nvidia.com/gpu": str(self.gpus_per_node),
            "ephemeral-storage": "10Ti",
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                    "node-role.kubernetes.io/gpu": "",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                },
            },
            "spec": {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "addresses": [
                    {"type": "InternalIP", "address": f"10.240.{index // 250}.{index % 250 + 2}"},
                    {"type": "Hostname", "address": name},
                ],
            },
        }

    def add_nodes(self, count: int, prefix: str = "kwok-gpu-") -> list[str]:
        existing = self.get("/api/v1/nodes") or {"items": []}
        names = {n["metadata"]["name"] for n in existing["items"]}
        created: list[str] = []
        i = 0
        while len(created) < count:
            name = f"{prefix}{i}"
            i += 1
            if name in names:
                continue
            self.request("POST", "/api/v1/nodes", self.node_manifest(name, i - 1))
            created.append(name)
        return created

    def _nodes_ready(self, count: int) -> bool:
        nodes = self.get("/api/v1/nodes") or {"items": []}
        ready = 0
        for n in nodes["items"]:
            conds = {c.get("type"): c.get("status") for c in n.get("status", {}).get("conditions") or []}
            # The node-lifecycle controller lifts the not-ready NoSchedule taint that the
            # TaintNodesByCondition admission put on the new node once kwok reports Ready.
            taints = [
                t
                for t in n.get("spec", {}).get("taints") or []
                if t.get("key", "").startswith("node.kubernetes.io/")
            ]
            if conds.get("Ready") == "True" and not taints:
                ready += 1
        return ready >= count

    # -- helpers ------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; raises CalledProcessError (with output) on failure."""
        cmd = [str(self.binaries["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def apply(self, manifest: str | Mapping[str, Any] | list[Any]) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str | None = None) -> Any:
        """A raw API call as admin; returns the decoded JSON (None for 404)."""
        if self._ssl is None:
            raise ClusterError("cluster not started")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type or (
                "application/merge-patch+json" if method == "PATCH" else "application/json"
            )
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")
            raise ClusterError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def wait_for(self, desc: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
        """Poll ``fn`` until it returns something truthy; raise TimeoutError with ``desc``."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = fn()
            except Exception as exc:
                last_exc = exc
            else:
                if value:
                    return value
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {desc}"
            + (f" (last error: {last_exc})" if last_exc else "")
        )

    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def check_alive(self) -> None:
        """Raise ClusterError if a component exited that was not stopped on purpose."""
        dead = [p for p in self.procs.values() if p.crashed]
        if dead:
            raise ClusterError(", ".join(f"{p.name} exited with {p.returncode}" for p in dead))

    def log_report(self, lines: int = 40) -> str:
        parts = [f"---- control-plane logs in {self.dir / 'logs'} ----"]
        for p in self.procs.values():
            state = "running" if p.running else f"exited {p.returncode}" if p.popen else "not started"
            parts.append(f"---- {p.name} ({state}), last {lines} lines of {p.log}:\n{p.tail(lines)}")
        return "\n".join(parts)

    # -- internals ----------------------------------------------------------------------

    def _add(self, name: str, args: list[str]) -> None:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env["HOME"] = str(self.dir)  # kwok reads ~/.kwok/kwok.yaml; keep it out of the user's home
        self.procs[name] = Process(
            name, [str(self.binaries[name]), *args], self.dir / "logs" / f"{name}.log", env
        )

    def _wait(self, desc: str, fn: Callable[[], bool], deadline: float) -> None:
        t0 = time.monotonic()
        try:
            self._wait_inner(desc, fn, deadline)
        finally:
            self.timings[desc] = round(time.monotonic() - t0, 2)

    def _wait_inner(self, desc: str, fn: Callable[[], bool], deadline: float) -> None:
        while True:
            for p in self.procs.values():
                if p.crashed:
                    raise ClusterError(f"{p.name} exited with code {p.returncode} while waiting for {desc}")
            try:
                if fn():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {desc}")
            time.sleep(0.1)

    def _apiserver_ready(self) -> bool:
        assert self._ssl is not None
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=self._ssl, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _etcd_args(self) -> list[str]:
        p = self.pki
        client = f"https://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            "--name=default",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            f"--cert-file={p.etcd.cert}",
            f"--key-file={p.etcd.key}",
            f"--trusted-ca-file={p.ca.cert}",
            "--client-cert-auth=true",
            "--unsafe-no-fsync=true",  # test data only; makes writes ~10x faster on slow disks
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        return [
            f"--etcd-servers=https://127.0.0.1:{self.ports['etcd']}",
            f"--etcd-cafile={p.ca.cert}",
            f"--etcd-certfile={p.etcd_client.cert}",
            f"--etcd-keyfile={p.etcd_client.key}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={self.cert_dir}",
            f"--tls-cert-file={p.apiserver.cert}",
            f"--tls-private-key-file={p.apiserver.key}",
            f"--client-ca-file={p.ca.cert}",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # With a real node the apiserver advertises the bridge address and keeps the
            # `kubernetes` Service endpoints itself (the default lease reconciler).
            *(() if self.real_node else ("--endpoint-reconciler-type=none",)),
            *(
                (
                    # Node names do not resolve here; dial the node's InternalIP, verified
                    # against the harness CA, with a client certificate the kubelet accepts.
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    f"--kubelet-certificate-authority={p.ca.cert}",
                    f"--kubelet-client-certificate={self.kubelet_client.cert}",
                    f"--kubelet-client-key={self.kubelet_client.key}",
                )
                if self.real_node
                else ()
            ),
            f"--requestheader-client-ca-file={p.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client.cert}",
            f"--proxy-client-key-file={p.front_proxy_client.key}",
            # Close watches quickly on SIGTERM so stop_apiserver() (fault-injection tests) is fast.
            "--shutdown-watch-termination-grace-period=2s",
            "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400",
            "--profiling=false",
            f"--v={self.verbosity}",
        ]

    def _kcm_args(self, kubeconfig: Path) -> list[str]:
        p = self.pki
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kcm']}",
            "--leader-elect=false",
            # All default controllers: job, garbage-collector, namespace, serviceaccount,
            # serviceaccount-token, node-lifecycle, ttl-after-finished, deployment, ...
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.service_account_key}",
            f"--root-ca-file={p.ca.cert}",
            f"--cluster-signing-cert-file={p.ca.cert}",
            f"--cluster-signing-key-file={p.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-job-syncs=20",
            "--concurrent-gc-syncs=40",
            "--profiling=false",
            f"--v={self.verbosity}",
        ]

    def _scheduler_args(self, kubeconfig: Path) -> list[str]:
        cfg = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }
        cfg_path = self.dir / "kube-scheduler.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        return [
            f"--config={cfg_path}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}",
            "--profiling=false",
            f"--v={self.verbosity}",
        ]

    def _kwok_args(self, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--config={STAGES_FILE}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--cidr={self.pod_cidr}",
            "--node-ip=10.240.0.1",  # default for nodes created without addresses
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _https_ok(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the component's self-signed serving cert
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[Cluster]:
    c = Cluster(**kwargs)
    try:
        yield c.start()
    finally:
        c.stop()
