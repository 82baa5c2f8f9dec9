"""Proof that the local control plane (tests.cluster) behaves like a real cluster with GPU nodes."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, ClusterError, binaries

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _job(
    name: str, *, annotations: dict[str, str] | None = None, gpus: int = 1, backoff: int = 0
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "rlaif-trainer:test",
                            "command": ["rlaif-train", "rl"],
                            "resources": {
                                "limits": {"nvidia.com/gpu": str(gpus), "cpu": "1", "memory": "1Gi"}
                            },
                        }
                    ],
                },
            },
        },
    }


def _create_job(cluster: Cluster, ns: str, job: dict[str, Any]) -> None:
    cluster.request("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", job)


def _job_condition(cluster: Cluster, ns: str, name: str) -> str | None:
    job = cluster.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def _pods(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    pods = cluster.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D{job}")
    return list(pods["items"]) if pods else []


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


def test_binaries_report_pinned_versions(cluster: Cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    built = {name: path.parent == binaries.cache_dir() for name, path in cluster.binaries.items()}
    if built["kubectl"]:
        assert versions["clientVersion"]["gitVersion"] == binaries.KUBE_VERSION
    if built["kube-apiserver"]:
        assert versions["serverVersion"]["gitVersion"] == binaries.KUBE_VERSION
    else:  # a user-provided (envtest) apiserver: the API reports what the binary says it is
        reported = binaries.version_of("kube-apiserver", cluster.binaries["kube-apiserver"])
        assert reported.endswith(versions["serverVersion"]["gitVersion"])
    if built["etcd"]:
        assert binaries.ETCD_VERSION.lstrip("v") in binaries.version_of("etcd", cluster.binaries["etcd"])
    if built["kwok"]:
        assert binaries.KWOK_VERSION in binaries.version_of("kwok", cluster.binaries["kwok"])


def test_gpu_nodes_advertise_gpus(cluster: Cluster) -> None:
    nodes = cluster.get("/api/v1/nodes")["items"]
    gpu_nodes = [n for n in nodes if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"]
    assert len(gpu_nodes) >= 2
    for n in gpu_nodes:
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_gpu_job_is_scheduled_and_completes(cluster: Cluster, namespace: str) -> None:
    _create_job(cluster, namespace, _job("gpu-ok"))
    assert (
        cluster.wait_for("job gpu-ok finished", lambda: _job_condition(cluster, namespace, "gpu-ok"), 60)
        == "Complete"
    )
    [pod] = _pods(cluster, namespace, "gpu-ok")
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["status"]["phase"] == "Succeeded"
    assert _terminated(pod)["exitCode"] == 0
    # The ServiceAccount admission plugin ran: the pod got the default SA and its token volume.
    assert pod["spec"]["serviceAccountName"] == "default"
    assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])


def test_annotated_pod_fails_its_job_with_chosen_exit_code(cluster: Cluster, namespace: str) -> None:
    _create_job(cluster, namespace, _job("gpu-fail", annotations={"rlaif.dev/test-exit-code": "3"}))
    assert (
        cluster.wait_for("job gpu-fail finished", lambda: _job_condition(cluster, namespace, "gpu-fail"), 60)
        == "Failed"
    )
    job = cluster.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/gpu-fail")
    assert job["status"].get("failed") == 1
    [pod] = _pods(cluster, namespace, "gpu-fail")
    assert pod["status"]["phase"] == "Failed"
    assert _terminated(pod)["exitCode"] == 3
    assert _terminated(pod)["reason"] == "Error"


def test_termination_message_and_run_time_annotations(cluster: Cluster, namespace: str) -> None:
    summary = json.dumps({"stage": "reward", "metrics": {"accuracy": 0.71}, "quote": 'it\'s "fine"\n'})
    t0 = time.monotonic()
    _create_job(
        cluster,
        namespace,
        _job(
            "summary",
            annotations={"rlaif.dev/test-termination-message": summary, "rlaif.dev/test-run-seconds": "3"},
        ),
    )
    # While it runs, it is Running on a kwok node.
    cluster.wait_for(
        "pod Running",
        lambda: [p for p in _pods(cluster, namespace, "summary") if p["status"].get("phase") == "Running"],
        30,
    )
    assert (
        cluster.wait_for("job summary finished", lambda: _job_condition(cluster, namespace, "summary"), 60)
        == "Complete"
    )
    assert time.monotonic() - t0 >= 2.5, "rlaif.dev/test-run-seconds=3 was not honoured"
    [pod] = _pods(cluster, namespace, "summary")
    term = _terminated(pod)
    assert term["message"] == summary
    assert json.loads(term["message"])["metrics"]["accuracy"] == 0.71


def test_long_termination_message_keeps_the_tail_like_the_kubelet(cluster: Cluster, namespace: str) -> None:
    message = "x" * 1000 + json.dumps({"tail": "y" * 4000})
    _create_job(
        cluster,
        namespace,
        _job(
            "longmsg",
            annotations={"rlaif.dev/test-termination-message": message, "rlaif.dev/test-run-seconds": "0"},
        ),
    )
    assert (
        cluster.wait_for("job longmsg finished", lambda: _job_condition(cluster, namespace, "longmsg"), 60)
        == "Complete"
    )
    [pod] = _pods(cluster, namespace, "longmsg")
    assert _terminated(pod)["message"] == message[-4096:]


def test_garbage_collector_deletes_dependents(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = cluster.request("POST", base, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    cluster.request("POST", base, {"metadata": {"name": "dependent", "ownerReferences": [ref]}})
    cluster.request("DELETE", f"{base}/owner")
    cluster.wait_for(
        "dependent ConfigMap garbage-collected", lambda: cluster.get(f"{base}/dependent") is None, 30
    )

    # A long-running Job's pod is deleted with the Job (GC + kwok's pod-delete stage).
    _create_job(cluster, namespace, _job("long", annotations={"rlaif.dev/test-run-seconds": "600"}))
    cluster.wait_for(
        "long pod Running",
        lambda: [p for p in _pods(cluster, namespace, "long") if p["status"].get("phase") == "Running"],
        30,
    )
    cluster.request(
        "DELETE",
        f"/apis/batch/v1/namespaces/{namespace}/jobs/long",
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
    )
    cluster.wait_for("pods of deleted job gone", lambda: not _pods(cluster, namespace, "long"), 30)


def test_kopf_runner_handles_configmaps(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    from kopf.testing import KopfRunner

    handler = tmp_path / "throwaway_operator.py"
    handler.write_text(
        "import kopf\n\n"
        "@kopf.on.startup()\n"
        "def configure(settings: kopf.OperatorSettings, **_):\n"
        "    settings.watching.server_timeout = 10\n\n"
        "@kopf.on.create('configmaps', labels={'rlaif.dev/kopf-test': 'yes'})\n"
        "def mark(body, patch, **_):\n"
        "    patch.metadata.annotations['rlaif.dev/handled-by'] = 'kopf'\n"
        "    return {'seen': body['metadata']['name']}\n"
    )
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", str(handler)]
    with KopfRunner(args, timeout=60) as runner:
        cluster.request(
            "POST", base, {"metadata": {"name": "watched", "labels": {"rlaif.dev/kopf-test": "yes"}}}
        )
        cm = cluster.wait_for(
            "kopf annotation",
            lambda: (
                (c := cluster.get(f"{base}/watched"))
                and "rlaif.dev/handled-by" in (c["metadata"].get("annotations") or {})
                and c
            ),
            30,
        )
    assert cm["metadata"]["annotations"]["rlaif.dev/handled-by"] == "kopf"
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Handler 'mark' succeeded" in runner.output


def test_apiserver_restart_keeps_state_and_controllers_recover(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    cluster.request("POST", base, {"metadata": {"name": "before-restart"}, "data": {"x": "1"}})
    cluster.stop_apiserver()
    assert not cluster.procs["kube-apiserver"].running
    with pytest.raises(OSError):
        cluster.get(f"{base}/before-restart")
    cluster.start_apiserver()
    assert cluster.get(f"{base}/before-restart")["data"] == {"x": "1"}
    # Scheduler, controller-manager and kwok reconnect: a new Job still runs to completion.
    _create_job(cluster, namespace, _job("after-restart"))
    assert (
        cluster.wait_for("job after restart", lambda: _job_condition(cluster, namespace, "after-restart"), 90)
        == "Complete"
    )


def test_crashed_apiserver_and_kwok_come_back(cluster: Cluster, namespace: str) -> None:
    cluster.stop_apiserver(graceful=False)  # SIGKILL: a crash, not a graceful shutdown
    cluster.stop_component("kwok", graceful=False)
    cluster.check_alive()  # components stopped on purpose do not count as crashed
    cluster.start_apiserver()
    cluster.start_component("kwok")
    _create_job(cluster, namespace, _job("after-crash"))
    assert (
        cluster.wait_for("job after crash", lambda: _job_condition(cluster, namespace, "after-crash"), 90)
        == "Complete"
    )


def test_missing_binary_fails_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_ASSET_KWOK", str(tmp_path / "nope"))
    with pytest.raises(binaries.BinaryError, match=r"TEST_ASSET_KWOK=.*python -m tests.cluster build"):
        binaries.ensure(["kwok"])
    monkeypatch.delenv("TEST_ASSET_KWOK")
    monkeypatch.delenv("TEST_ASSET_KUBE_SCHEDULER", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("RLAIF_TEST_BIN_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("RLAIF_TEST_NO_BUILD", "1")
    with pytest.raises(
        binaries.BinaryError, match=r"kube-scheduler v1\.36\.3 not found.*TEST_ASSET_KUBE_SCHEDULER"
    ):
        binaries.ensure(["kube-scheduler"])


def test_component_crash_at_startup_is_reported_and_cleaned_up(cluster: Cluster, tmp_path: Path) -> None:
    broken = Cluster(bins={**cluster.binaries, "kwok": Path("/bin/false")}, startup_timeout=60)
    with pytest.raises(ClusterError, match=r"kwok exited with code 1") as info:
        broken.start()
    assert "---- kube-apiserver (" in str(info.value)  # every component's log tail is in the message
    assert all(not p.running for p in broken.procs.values())
    assert not broken.dir.exists()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = {int(x) for x in children.read_text().split()}
                todo += list(kids - found)
                found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie is dead, just not yet reaped by init


def _start_up_command(tmp_path: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "up", "--nodes", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell starts a background job (`make test &`, nohup) with SIGINT ignored, and Python
        # keeps an inherited SIG_IGN: the Ctrl-C below would then do nothing. A terminal's Ctrl-C
        # reaches a foreground `up` with the default disposition, so give it that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C to stop"):
            return proc, lines
    proc.kill()
    raise AssertionError("`python -m tests.cluster up` did not come up:\n" + "".join(lines))


def test_up_command_stops_everything_on_ctrl_c(cluster: Cluster, tmp_path: Path) -> None:
    proc, lines = _start_up_command(tmp_path)
    text = "".join(lines)
    kubeconfig = re.search(r"^export KUBECONFIG=(\S+)$", text, re.M)
    assert kubeconfig, text
    children = _descendants(proc.pid)
    assert len(children) >= 5, text
    proc.send_signal(signal.SIGINT)
    try:
        # Each component gets up to 10 s of grace, in three rounds (the controllers together, then
        # the API server, then etcd): about 1.3 s idle, but a loaded CI box can use the rounds.
        assert proc.wait(45) == 0
    finally:
        if proc.poll() is None:  # failed: do not leave a control plane running after the test
            proc.kill()  # its components die with it (PR_SET_PDEATHSIG)
            proc.wait(10)
    assert not [p for p in children if _alive(p)]
    assert not Path(kubeconfig.group(1)).exists()  # temp dir removed


def test_a_cluster_left_running_is_stopped_at_exit(cluster: Cluster) -> None:
    # A script that never calls stop(): the atexit hook must stop it and remove its temp dir (the
    # SIGKILL safety net below kills the components, but leaves the directory behind).
    script = (
        "from tests.cluster import Cluster\n"
        "c = Cluster(nodes=1)\n"
        "c.start()\n"
        "print(c.dir)\n"
        "print(' '.join(str(p.popen.pid) for p in c.procs.values() if p.popen))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    workdir, pids = proc.stdout.splitlines()[-2:]
    assert len(pids.split()) >= 5, proc.stdout
    assert not Path(workdir).exists()
    assert not [pid for pid in map(int, pids.split()) if _alive(pid)]


def test_components_die_with_a_sigkilled_parent(cluster: Cluster, tmp_path: Path) -> None:
    proc, lines = _start_up_command(tmp_path)
    children = _descendants(proc.pid)
    assert len(children) >= 5, "".join(lines)
    proc.kill()  # no Python cleanup runs: PR_SET_PDEATHSIG must take the components down
    proc.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [p for p in children if _alive(p)]:
        time.sleep(0.2)
    assert not [p for p in children if _alive(p)]
    logs = re.search(r"logs: (\S+)/logs\)", "".join(lines))
    if logs:
        shutil.rmtree(logs.group(1), ignore_errors=True)


def test_port_clash_at_startup_is_retried(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tests.cluster.cluster as cluster_module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        real = cluster_module.free_port
        calls = iter([taken.getsockname()[1]])  # the first port handed out (etcd's) is in use
        monkeypatch.setattr(cluster_module, "free_port", lambda: next(calls, None) or real())
        with Cluster(bins=cluster.binaries, nodes=1) as second:
            assert second.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
    assert "port clash, retrying" in capsys.readouterr().err


def test_binary_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def exe(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    spec = binaries.SPECS["kube-apiserver"]
    monkeypatch.delenv(spec.env_var, raising=False)
    monkeypatch.setenv("RLAIF_TEST_BIN_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RLAIF_TEST_NO_BUILD", "1")
    cached = exe(tmp_path / "cache" / spec.cache_key())
    assert binaries.ensure(["kube-apiserver"])["kube-apiserver"] == cached
    envtest = exe(tmp_path / "envtest" / "kube-apiserver")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(envtest.parent))
    assert binaries.ensure(["kube-apiserver"])["kube-apiserver"] == envtest
    explicit = exe(tmp_path / "mine" / "apiserver")
    monkeypatch.setenv(spec.env_var, str(explicit))
    assert binaries.ensure(["kube-apiserver"])["kube-apiserver"] == explicit
