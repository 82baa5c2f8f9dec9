"""Child-process management that leaves nothing behind.

Every component runs in its own session/process group (so a whole tree can be signalled)
and with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` so it dies with us even when we are
SIGKILLed and no Python cleanup runs.  PDEATHSIG fires when the *thread* that forked the
child exits, so all children are forked from one long-lived daemon thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Spawner:
    """A daemon thread that does every fork, so PDEATHSIG is tied to the process lifetime."""

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            fn, fut = self._q.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tests.cluster-spawner", daemon=True)
                self._thread.start()
        fut: Future[Any] = Future()
        self._q.put((fn, fut))
        return fut.result()


_spawner = _Spawner()


class Process:
    """One named component: command line, log file, and the running Popen (if any)."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopped = False  # stopped on purpose (not crashed)

    def start(self) -> None:
        if self.running:
            return
        self.stopped = False

        def spawn() -> subprocess.Popen[bytes]:
            with open(self.log, "ab") as out:
                out.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(self.args)}\n".encode())
                out.flush()
                return subprocess.Popen(
                    self.args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )

        self.popen = _spawner.call(spawn)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def crashed(self) -> bool:
        """Started, exited, and not because we stopped it."""
        return self.popen is not None and not self.stopped and self.popen.poll() is not None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, timeout: float = 10.0, *, graceful: bool = True) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout`` (at once if not graceful)."""
        p = self.popen
        if p is None:
            return
        self.stopped = True
        if p.poll() is None:
            _killpg(p.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        # Anything the component forked into its group goes too.
        _killpg(p.pid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            data = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(data[-lines:])


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
