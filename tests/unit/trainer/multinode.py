"""Launch a stage as N "nodes" on loopback, through the operator's own launch contract.

Each node is one ``accelerate launch`` agent (torchrun underneath), started with the command line
:func:`rlaif_api.contract.launch_command` gives the stage pod: the node count, a literal node rank
(the operator passes ``$(JOB_COMPLETION_INDEX)``) and a rendezvous at 127.0.0.1. With no GPU every
process joins a gloo group. One process per node (``gpus_per_node=0``), so two nodes are two ranks.
Holds no tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlaif_api.contract import FLAG_CONFIG, FLAG_NO_PROGRESS, FLAG_TERMINATION_LOG, launch_command

#: The environment variable that tags every process of one launch (see :func:`run_nodes`).
TAG_VAR = "RLAIF_TEST_LAUNCH"
#: Generous: two agents share 2 loaded cores in CI, and a hung rendezvous must still fail the test.
TIMEOUT_S = 300


@dataclass
class NodeRun:
    rank: int
    returncode: int
    output: str


def has_launcher() -> bool:
    """Whether ``accelerate`` (the multi-node launcher) is installed beside this Python, or on PATH."""
    return Path(sys.executable).with_name("accelerate").exists() or shutil.which("accelerate") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage process: CPU, one thread per process (two processes share the
    machine's cores), the test's import path (for test-only labeler callables) and the venv's
    executables (``rlaif-train``, ``accelerate``) on PATH, as in the trainer image."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
        "RLAIF_DEVICE": "cpu",
        **extra,
    }


def stage_args(stage: str, config: Path, termination_log: Path) -> list[str]:
    """The stage pod's arguments (as the operator's builder writes them, without the metrics port)."""
    return [stage, FLAG_CONFIG, str(config), FLAG_TERMINATION_LOG, str(termination_log), FLAG_NO_PROGRESS]


def run_single(args: list[str], env: dict[str, str]) -> NodeRun:
    """One process, the command a one-node, zero- or one-GPU stage pod runs."""
    cmd = launch_command(args, gpus_per_node=0)
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, stdin=subprocess.DEVNULL
    )
    return NodeRun(0, proc.returncode, proc.stdout + proc.stderr)


def run_nodes(
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    *,
    nodes: int = 2,
    kill_when: Callable[[], bool] | None = None,
) -> list[NodeRun]:
    """``nodes`` launcher agents on loopback, each one's output in
    ``log_dir/node-<rank>.log``; returns each one's exit code and output. ``kill_when``, polled
    while they run, SIGKILLs every agent and worker at once (a lost JobSet: every pod restarts)
    the first time it is true."""
    port = free_port()
    # torchrun starts each worker in a session of its own, so killing an agent's process group
    # leaves its workers running; a tag in their environment finds every process of this launch.
    tag = uuid.uuid4().hex
    env = {**env, TAG_VAR: tag}
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = [log_dir / f"node-{rank}.log" for rank in range(nodes)]
    # Files, not pipes: a pipe nobody reads while kill_when is polled could fill and stall a node.
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(path.open("w")) for path in paths]
        procs = [
            subprocess.Popen(
                launch_command(
                    args,
                    gpus_per_node=0,
                    nodes=nodes,
                    node_rank=str(rank),
                    main_process_ip="127.0.0.1",
                    main_process_port=port,
                ),
                env=env,
                stdout=logs[rank],
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            for rank in range(nodes)
        ]
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while any(p.poll() is None for p in procs):
                if kill_when is not None and kill_when():
                    _kill_tagged(tag)
                    kill_when = None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the launcher agents did not finish in {TIMEOUT_S} s")
                time.sleep(0.01)
        finally:
            _kill_tagged(tag)  # whatever is left (a timeout, a stray worker)
            for p in procs:
                p.wait()
    return [NodeRun(i, p.returncode, paths[i].read_text()) for i, p in enumerate(procs)]


def _kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment holds this launch's tag (agents and workers)."""
    marker = f"{TAG_VAR}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
