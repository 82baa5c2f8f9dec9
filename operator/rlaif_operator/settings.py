"""The operator-wide configuration: its command-line flags (see ``__main__``), in one frozen value.

Kept apart from the builders and the reconcile core, which both read it, so that neither owns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKSPACE_MOUNT = "/workspace"  # where stage pods mount the workspace; the default workspace root
DEFAULT_TRAINER_METRICS_PORT = 9400


@dataclass(frozen=True)
class Settings:
    """Operator-wide configuration (command-line flags)."""

    trainer_image: str | None = None
    gpu_resource_name: str = "nvidia.com/gpu"
    trainer_service_account: str | None = None
    default_queue_name: str | None = None
    workspace_root: str = WORKSPACE_MOUNT
    max_backoff_seconds: float = 600.0
    wait_requeue_seconds: float = 30.0
    default_tolerations: tuple[dict[str, Any], ...] = ()
    trainer_metrics_port: int = DEFAULT_TRAINER_METRICS_PORT  # 0: stage pods serve no metrics
    # how often the operator reads the running stage pods' metrics for status.stages.*.progress; 0: never
    progress_scrape_seconds: float = 30.0
