"""kstatus' verdict on Kubernetes objects, from the real library (sigs.k8s.io/cli-utils/pkg/kstatus).

``go/kstatus`` is a tiny wrapper program (built and cached like the control plane's binaries) that
reads JSON objects and prints what ``status.Compute`` says: the same call ``kpt live status``,
cli-utils' ``apply --wait`` and Flux's default health assessment make.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from .binaries import ensure


def verdicts(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``{"name", "status", "message", "conditions"}`` per object, in order; ``status`` is
    InProgress, Failed, Current, Terminating or Unknown."""
    exe = ensure(["kstatus"])["kstatus"]
    proc = subprocess.run(
        [str(exe)], input="\n".join(json.dumps(o) for o in objs), capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kstatus failed (exit {proc.returncode}): {proc.stderr.strip()}")
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    if len(out) != len(objs):
        raise RuntimeError(f"kstatus answered {len(out)} verdicts for {len(objs)} objects")
    return out


def verdict(obj: dict[str, Any]) -> dict[str, Any]:
    return verdicts([obj])[0]
