"""A real kubelet node beside the kwok nodes: containerd (CRI) + runc + a CNI bridge, a kubelet and
kube-proxy built from the pinned Kubernetes module (binaries.NODE).

Used through ``Cluster(real_node=True)``; the cluster calls :meth:`RealNode.prepare` before the
apiserver starts (the apiserver listens on the node bridge's address, so pods can reach it through
the ``kubernetes`` Service) and :meth:`RealNode.start` once the control plane is up. Its processes
join ``cluster.procs``, so their logs, crash checks and teardown are the control plane's.

How pod traffic stays on this machine: pods get addresses on a bridge (``rlaif0``, 10.88.0.0/24)
that the harness creates and that has no uplink; the CNI config gives pods routes to that subnet
and to the Service CIDR only (no default route, no IP masquerade), so a pod can reach the host's
bridge address (apiserver, kubelet, cluster DNS) and other pods, nothing else. kube-proxy (iptables
mode) implements the Service ClusterIPs; the apiserver maintains the ``kubernetes`` Service endpoints
on the bridge address itself. Cluster DNS is CoreDNS (kubernetes plugin, zone ``cluster.local``
only, nothing forwarded) on the bridge address: kopf's service-account login, which the operator's
own API client uses, dials ``https://kubernetes.default.svc``.

Security: the kubelet authenticates as ``system:node:<name>`` (group ``system:nodes``) with its own
client certificate, so the apiserver's Node authorizer and NodeRestriction admission apply to it;
kube-proxy uses ``system:kube-proxy`` (bound by the default ``system:node-proxier`` role). The
kubelet's serving certificate comes from the same CA, its API needs client certificates (no
anonymous access) and authorizes through the apiserver (webhook).

Only one real node per machine at a time (the bridge, iptables rules and the CNI state are
global): a lock file in the cache directory serialises sessions that want one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from . import binaries, certs
from .procs import Process

if TYPE_CHECKING:
    from .cluster import Cluster

NODE_NAME = "rlaif-node-0"
BRIDGE = "rlaif0"
BRIDGE_IP = "10.88.0.1"
POD_SUBNET = "10.88.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
# Only pods that ask for real execution land here: they select the label and tolerate the taint.
NODE_LABEL = "rlaif.dev/real-node"
NODE_TAINT = {"key": "rlaif.dev/real-node", "value": "true", "effect": "NoSchedule"}
PAUSE_IMAGE = "localhost/rlaif-pause:1"
CNI_BIN_DIR = Path("/usr/lib/cni")
SYSTEM_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "mount")


class NodeError(RuntimeError):
    """The real node could not be prepared or did not become Ready."""


def state_root() -> Path:
    """Persistent state: containerd's content store, so imported images survive between runs."""
    return binaries.cache_dir().parent / "node"


def missing_tools() -> list[str]:
    missing = [t for t in SYSTEM_TOOLS if shutil.which(t) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (containernetworking-plugins)")
    return missing


def _run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NodeError(
            f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


class RealNode:
    def __init__(self, cluster: Cluster, *, name: str = NODE_NAME) -> None:
        self.cluster = cluster
        self.name = name
        self.dir = Path()
        self.root = state_root() / "containerd"
        self._lock: IO[str] | None = None
        self._netns_before: set[str] = set()
        self.ports: dict[str, int] = {}
        self.loaded: dict[str, Any] = {}  # target -> images.Image imported into containerd

    # -- before the apiserver ----------------------------------------------------------------

    def prepare(self) -> None:
        """Take the machine-wide lock and create the pod bridge (the apiserver binds its address)."""
        if os.geteuid() != 0:
            raise NodeError("the real node needs root (containerd, network namespaces, iptables)")
        missing = missing_tools()
        if missing:
            raise NodeError(
                f"the real node needs {', '.join(missing)}: run scripts/install-node-deps.sh (as root)"
            )
        state_root().mkdir(parents=True, exist_ok=True)
        lock = open(state_root() / ".node.lock", "w")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"[tests.cluster] waiting for another real node ({state_root() / '.node.lock'})",
                file=sys.stderr,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        self._lock = lock
        self._cleanup_network()  # a previous run killed with -9 may have left them
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        self._netns_before = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()

    # -- after the control plane -------------------------------------------------------------

    def start(self, bins: dict[str, Path], deadline: float) -> None:
        c = self.cluster
        self.dir = c.dir / "node"
        for sub in ("pki", "cni", "kubelet", "containerd-state", "cni-ipam"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        from .cluster import free_port, write_kubeconfig

        self.ports = {
            k: free_port()
            for k in ("kubelet", "kubelet-healthz", "proxy-metrics", "proxy-healthz", "coredns-ready")
        }
        pki = self.dir / "pki"
        kubelet_client = certs.issue(
            c.pki.ca, pki, "kubelet-client", f"system:node:{self.name}", ("system:nodes",), client=True
        )
        kubelet_serving = certs.issue(
            c.pki.ca, pki, "kubelet-serving", f"system:node:{self.name}", ("system:nodes",),
            server=True, dns=(self.name, "localhost"), ips=("127.0.0.1", BRIDGE_IP),
        )  # fmt: skip
        proxy_client = certs.issue(c.pki.ca, pki, "kube-proxy", "system:kube-proxy", client=True)
        dns_client = certs.issue(c.pki.ca, pki, "coredns", "system:coredns", client=True)
        dns_kc = write_kubeconfig(
            self.dir / "coredns.kubeconfig", c.server, c.pki.ca.cert, dns_client, "system:coredns"
        )
        self._grant_coredns()
        kubelet_kc = write_kubeconfig(
            self.dir / "kubelet.kubeconfig",
            c.server,
            c.pki.ca.cert,
            kubelet_client,
            f"system:node:{self.name}",
        )
        proxy_kc = write_kubeconfig(
            self.dir / "kube-proxy.kubeconfig", c.server, c.pki.ca.cert, proxy_client, "system:kube-proxy"
        )
        self._write_cni_config()
        sock = self.dir / "containerd.sock"
        self.socket = sock
        containerd_cfg = self._write_containerd_config(sock)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(c.dir)}
        c.procs["containerd"] = Process(
            "containerd",
            ["containerd", "--config", str(containerd_cfg)],
            c.dir / "logs" / "containerd.log",
            env,
        )
        c.procs["kubelet"] = Process(
            "kubelet",
            [
                str(bins["kubelet"]),
                f"--config={self._write_kubelet_config(kubelet_serving, sock)}",
                f"--kubeconfig={kubelet_kc}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--cert-dir={pki}",
                f"--hostname-override={self.name}",
                # kubectl logs/exec: the apiserver dials the node's InternalIP, which the serving
                # certificate names. Not 127.0.0.1: the kubelet refuses a loopback node IP.
                f"--node-ip={BRIDGE_IP}",
                f"--node-labels={NODE_LABEL}=true",
                f"--v={c.verbosity}",
            ],
            c.dir / "logs" / "kubelet.log",
            env,
        )
        c.procs["kube-proxy"] = Process(
            "kube-proxy",
            [str(bins["kube-proxy"]), f"--config={self._write_proxy_config(proxy_kc)}", f"--v={c.verbosity}"],
            c.dir / "logs" / "kube-proxy.log",
            env,
        )
        c.procs["coredns"] = Process(
            "coredns",
            [str(bins["coredns"]), "-conf", str(self._write_corefile(dns_kc))],
            c.dir / "logs" / "coredns.log",
            env,
        )
        c.procs["coredns"].start()
        c.procs["containerd"].start()
        c._wait(
            "containerd socket",
            lambda: sock.exists() and self.ctr("version", check=False).returncode == 0,
            deadline,
        )
        from . import images

        images.import_into(self, [images.pause_image()])
        c.procs["kubelet"].start()
        c.procs["kube-proxy"].start()
        from .cluster import _http_ok

        c._wait(
            "coredns /ready",
            lambda: _http_ok(f"http://127.0.0.1:{self.ports['coredns-ready']}/ready"),
            deadline,
        )
        c._wait(f"real node {self.name} Ready", self.ready, deadline)

    def ready(self) -> bool:
        node = self.cluster.get(f"/api/v1/nodes/{self.name}")
        if not node:
            return False
        conds = {x.get("type"): x.get("status") for x in node.get("status", {}).get("conditions") or []}
        return conds.get("Ready") == "True"

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """ctr against this node's containerd, in the CRI plugin's k8s.io namespace."""
        return _run(
            "ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args, check=check, timeout=timeout
        )

    def images(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q").stdout.split())

    # -- teardown ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop pods, then kube-proxy, kubelet and containerd; remove mounts, netns, rules, bridge."""
        c = self.cluster
        try:
            if c.procs.get("kubelet") and c.procs["kubelet"].running:
                self._drain()
            if "containerd" in c.procs and c.procs["containerd"].running:
                self._kill_tasks()
            for name in ("kube-proxy", "kubelet", "containerd", "coredns"):
                if name in c.procs:
                    with contextlib.suppress(Exception):
                        c.procs[name].stop()
            self._kill_shims()
            for d in (self.dir / "kubelet", self.dir / "containerd-state"):
                _unmount_below(d)
            if "kube-proxy" in c.procs:
                with contextlib.suppress(Exception):
                    _run(c.procs["kube-proxy"].args[0], "--cleanup", check=False, timeout=60)
            self._cleanup_network()
        finally:
            if self._lock is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock, fcntl.LOCK_UN)
                    self._lock.close()
                self._lock = None

    def _drain(self, timeout: float = 30) -> None:
        """Delete the node's pods so that the kubelet itself stops their containers and tears
        down their sandboxes (CNI DEL: the veth and the address go back)."""
        with contextlib.suppress(Exception):
            pods = self.cluster.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.name}") or {
                "items": []
            }
            for pod in pods["items"]:
                meta = pod["metadata"]
                self.cluster.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                )
            end = time.monotonic() + timeout
            while (
                time.monotonic() < end
                and self.ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split()
            ):
                time.sleep(0.5)

    def _kill_tasks(self) -> None:
        with contextlib.suppress(Exception):
            tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split()
            for t in tasks:
                self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", t, check=False, timeout=30)
            for t in tasks:
                self.ctr("tasks", "delete", "--force", t, check=False, timeout=30)

    def _kill_shims(self) -> None:
        """containerd's shims run in their own session so that they outlive a containerd restart;
        ours are recognisable by our socket address on their command line."""
        needle = str(self.dir / "containerd.sock").encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"containerd-shim" in cmdline and needle in cmdline:
                    os.kill(int(pid), 9)

    def _cleanup_network(self) -> None:
        if os.path.isdir("/var/run/netns"):
            for ns in set(os.listdir("/var/run/netns")) - self._netns_before:
                if ns.startswith("cni-"):
                    _run("ip", "netns", "delete", ns, check=False)
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            # veth host ends die with their namespaces; the bridge goes last.
            _run("ip", "link", "delete", BRIDGE, check=False)

    # -- configuration files -----------------------------------------------------------------

    def _write_cni_config(self) -> None:
        conf = {
            "cniVersion": "1.0.0",
            "name": "rlaif-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing leaves the machine, so nothing to masquerade
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.dir / "cni-ipam"),
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_IP}]],
                        # No default route: the pod subnet (connected) and the Service CIDR only.
                        "routes": [{"dst": self.cluster.service_cidr}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.dir / "cni" / "10-rlaif.conflist").write_text(json.dumps(conf, indent=2))

    def _write_containerd_config(self, sock: Path) -> Path:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{self.root}"
state = "{self.dir / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM refuses to lower oom_score_adj; without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    # Images are imported, never pulled (no registry is reachable); keep their layers.
    discard_unpacked_layers = false
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.dir / "cni"}"
    max_conf_num = 1
[plugins."io.containerd.internal.v1.opt"]
  path = "{state_root() / "opt"}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(text)
        return path

    def _write_kubelet_config(self, serving: certs.CertPair, sock: Path) -> Path:
        cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The machine mounts cgroup v1, which the kubelet refuses unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{sock}",
            "address": BRIDGE_IP,  # the kubelet API: reachable from this machine only
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet-healthz"],
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "registerWithTaints": [NODE_TAINT],
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "maxPods": 30,
            "serializeImagePulls": False,
            # Images cannot be pulled again (no registry): never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # A shared development disk: evict only when it is really full.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "nodeStatusReportFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
            # ClusterFirst pods ask CoreDNS on the bridge; Default-policy pods get an empty file.
            "clusterDNS": [BRIDGE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self._write_resolv_conf()),
            "logging": {"format": "text"},
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def _write_resolv_conf(self) -> Path:
        # No route to any outside resolver: the host's resolv.conf would be of no use to a pod.
        path = self.dir / "resolv.conf"
        path.write_text("# no DNS for pods on the test node (tests/cluster/node.py)\n")
        return path

    def _grant_coredns(self) -> None:
        """The read access the kubernetes plugin needs (what the coredns ClusterRole of a
        kubeadm cluster grants), bound to the certificate's user."""
        c = self.cluster
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }  # fmt: skip
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
        }
        c.request("POST", f"{rbac}/clusterroles", role)
        c.request("POST", f"{rbac}/clusterrolebindings", binding)

    def _write_corefile(self, kubeconfig: Path) -> Path:
        # Only the cluster zone, only on the bridge address: names outside it get REFUSED, since
        # nothing may be forwarded off this machine.
        text = f"""{CLUSTER_DOMAIN}:53 {{
    bind {BRIDGE_IP}
    ready 127.0.0.1:{self.ports["coredns-ready"]}
    errors
    cache 5
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig} rlaif-test
    }}
}}
"""
        path = self.dir / "Corefile"
        path.write_text(text)
        return path

    def _write_proxy_config(self, kubeconfig: Path) -> Path:
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            "bindAddress": "127.0.0.1",
            "metricsBindAddress": f"127.0.0.1:{self.ports['proxy-metrics']}",
            "healthzBindAddress": f"127.0.0.1:{self.ports['proxy-healthz']}",
            # Leave the machine's conntrack sysctls alone (a VM may refuse them).
            "conntrack": {"maxPerCore": 0, "min": 0},
            "iptables": {"localhostNodePorts": False},
            "nodePortAddresses": [f"{BRIDGE_IP}/32"],
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path


def _unmount_below(directory: Path) -> None:
    """Lazily unmount everything the kubelet or containerd mounted under ``directory``."""
    top = str(directory.resolve())
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    # The kubelet bind-mounts its root dir onto itself, so the directory itself goes last.
    below = (m for m in mounts if m == top or m.startswith(top + "/"))
    for mnt in sorted(below, key=len, reverse=True):
        _run("umount", "-l", mnt, check=False)
