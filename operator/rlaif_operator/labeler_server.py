"""The operator-run labeler server (``labeler.server``): pure builders, what a pass reads of it, and
the one decision about it.

While a stage that asks the labeler is current (:func:`rlaif_api.labeler_server_stages`), the job
owns a Deployment and a Service named ``<job>-labeler``: ``vllm serve`` in the vLLM image, or
``rlaif-train serve`` in the trainer image. The stages reach it as the openai provider's endpoint,
``http://<job>-labeler:8000/v1`` (resolved in the pod's own namespace), written into their configs.
A new stage attempt starts only once a server pod is ready; a stage that waits longer than
``readyTimeoutSeconds`` fails the job with ``LabelerServerNotReady`` and the server pod's last state.
The server is deleted as soon as no remaining stage needs it, on suspend and at the end (and by the
garbage collector with the job: it is owned by the RLAIFJob).

The server pods run without the workspace volume, so they never compete with a stage pod for a
ReadWriteOnce claim; vLLM loads its model from the hub or a path in its image, ``rlaif-train serve``
the embedded model baked into the trainer image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import rlaif_api as api
from rlaif_api import LabelerServerStatus, Reason, RLAIFJob, labeler_server_stages

from .builders import (
    ANNOTATION_JOB_NAME,
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_SERVER,
    LABELER_SERVER_COMPONENT,
    LABELER_SERVER_PORT,
    Owner,
    container_security_context,
    labeler_server_endpoint,
    labeler_server_name,
    object_metadata,
    pod_placement,
    pod_security_context,
    resource_amounts,
)
from .observe import ServerInfo
from .settings import Settings
from .timing import fmt_time, parse_time

PORT = LABELER_SERVER_PORT
PORT_NAME = "http"
CONTAINER = "server"
# The most top log-probabilities a request may ask for: what the openai client asks for.
MAX_LOGPROBS = api.contract.LABELER_TOP_LOGPROBS


def needed(job: RLAIFJob, stage: str | None) -> bool:
    return stage is not None and stage in labeler_server_stages(job.spec)


def _server_command(job: RLAIFJob) -> list[str]:
    labeler = job.spec.labeler
    assert labeler is not None and labeler.server is not None
    server = labeler.server
    served = labeler.model or ""
    model = server.model or served
    common = ["--host", "0.0.0.0", "--port", str(PORT), "--served-model-name", served]
    if server.engine == "vllm":
        # Prefix caching: every labeler prompt shares the preamble and exemplars (the hf labeler's
        # KV-cache reuse, done by the server).
        return [
            "vllm",
            "serve",
            model,
            *common,
            "--enable-prefix-caching",
            "--max-logprobs",
            str(MAX_LOGPROBS),
            *server.args,
        ]
    return ["rlaif-train", "serve", model, *common, "--max-logprobs", str(MAX_LOGPROBS), *server.args]


def build_server(job: RLAIFJob, owner: Owner, settings: Settings, trainer_image: str) -> list[dict[str, Any]]:
    """The Deployment and the Service of ``job``'s labeler server."""
    labeler = job.spec.labeler
    assert labeler is not None and labeler.server is not None
    server = labeler.server
    name = labeler_server_name(owner.name)
    select = {LABEL_COMPONENT: LABELER_SERVER_COMPONENT, LABEL_SERVER: name}
    tpl = job.spec.pod_template or api.PodTemplateOverrides()
    resources = server.resources or api.ResourceSpec(gpus=1 if server.engine == "vllm" else 0)
    amounts = resource_amounts(resources, settings)
    image = server.image or (api.VLLM_IMAGE if server.engine == "vllm" else trainer_image)
    env = [
        # Caches go to an emptyDir: the root filesystem stays read-only-friendly and non-root works.
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": api.contract.ENV_CACHE_DIR, "value": "/cache/rlaif"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": _server_command(job),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        # Ready once the model is loaded and serving (vLLM and rlaif-train serve both answer /health).
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": container_security_context(),
    }
    if amounts:
        container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            # vLLM's workers share tensors through /dev/shm; the runtime's 64 MiB default is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    pod_spec.update(pod_placement(job, settings))
    labels = dict(select)
    queue = job.spec.run_policy.queue_name or settings.default_queue_name
    deploy_labels = {**labels, **({KUEUE_QUEUE_LABEL: queue} if queue else {})}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(owner, name, deploy_labels),
        "spec": {
            "replicas": server.replicas,
            "selector": {"matchLabels": select},
            "template": {
                "metadata": {
                    "labels": {**(tpl.labels or {}), **object_metadata(owner, name, labels)["labels"]},
                    # the owning RLAIFJob, so that a pod's watch event wakes it (pod_owner_key)
                    "annotations": {ANNOTATION_JOB_NAME: owner.name},
                },
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(owner, name, labels),
        "spec": {
            "selector": select,
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    return [deployment, service]


# -- the decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStep:
    """What a pass does about the labeler server."""

    ensure: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (apiVersion, plural, name)
    # The LabelerServerReady condition (status, reason, message); None without labeler.server.
    condition: tuple[bool, Reason, str] | None = None
    status: LabelerServerStatus | None = None
    # Why a new attempt of the current stage must wait (LabelerServerStarting) or fail
    # (LabelerServerNotReady), with the message; None when it may start.
    blocks: tuple[Reason, str] | None = None
    requeue_after: float | None = None


def _removal(info: ServerInfo | None) -> list[tuple[str, str, str]]:
    if info is None or info.deleting:
        return []
    return [("apps/v1", "deployments", info.name), ("v1", "services", info.name)]


def server_step(
    job: RLAIFJob,
    owner: Owner,
    settings: Settings,
    trainer_image: str,
    current: str | None,
    running: bool,
    info: ServerInfo | None,
    old: LabelerServerStatus | None,
    now: datetime,
) -> ServerStep:
    """Keep the server while ``current`` needs it and the job is ``running`` (not suspended, failed
    or done); otherwise remove it. ``old``: the server's status of the last pass, which remembers
    since when the current stage waits for it."""
    mine = info if info is not None and info.owner_uid == owner.uid else None
    server = job.spec.labeler.server if job.spec.labeler is not None else None
    if server is None:
        return ServerStep(delete=_removal(mine))
    name = labeler_server_name(owner.name)
    if not (running and needed(job, current)):
        why = "no stage that asks the labeler runs now" if running else "the job is not running"
        return ServerStep(
            delete=_removal(mine),
            condition=(False, Reason.LABELER_SERVER_NOT_NEEDED, f"server {name} is stopped: {why}"),
        )
    objects = build_server(job, owner, settings, trainer_image)
    url = labeler_server_endpoint(owner.name)
    if mine is not None and mine.ready_replicas > 0 and not mine.deleting:
        return ServerStep(
            ensure=objects,
            condition=(
                True,
                Reason.LABELER_SERVER_READY,
                f"{mine.ready_replicas}/{server.replicas} server pods ready at {url}",
            ),
            status=LabelerServerStatus(endpoint=url, ready_replicas=mine.ready_replicas),
        )
    state = (mine.pod_state if mine is not None else None) or "its Deployment is being created"
    since_s = (old.waiting_since if old is not None else None) or fmt_time(now)
    since = parse_time(since_s) or now
    deadline = since + timedelta(seconds=server.ready_timeout_seconds)
    status = LabelerServerStatus(endpoint=url, ready_replicas=0, waiting_since=since_s)
    if now >= deadline:
        message = (
            f"labeler server {name} was not ready within labeler.server.readyTimeoutSeconds "
            f"({server.ready_timeout_seconds}s) for stage {current}: {state}"
        )
        return ServerStep(
            condition=(False, Reason.LABELER_SERVER_NOT_READY, message),
            status=status,
            blocks=(Reason.LABELER_SERVER_NOT_READY, message),
        )
    message = f"stage {current} waits for labeler server {name} to become ready: {state}"
    return ServerStep(
        ensure=objects,
        condition=(False, Reason.LABELER_SERVER_STARTING, message),
        status=status,
        blocks=(Reason.LABELER_SERVER_STARTING, message),
        requeue_after=(deadline - now).total_seconds(),
    )
