"""Pure manifest builders: the ConfigMap of resolved stage configs, the workspace PVC, and stage Jobs.

Nothing here talks to the API server. Every function takes the validated :class:`RLAIFJob`, its
Kubernetes identity (name, namespace, uid) and the operator :class:`Settings`, and returns plain
dicts ready to ``create``. Names are deterministic, so a restarted operator finds (adopts) the
children a previous instance created instead of duplicating them.

Security: stage pods satisfy the Pod Security Standard "restricted" profile (non-root UID 1000,
no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, no service-account
token). GPUs come through the device plugin's resource (``nvidia.com/gpu`` by default), which
needs none of those privileges. The only exception a user can introduce is through
``podTemplate.volumes`` (e.g. a hostPath volume), which the operator passes through unchanged and
the namespace's admission policy then judges.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import rlaif_api as api
from rlaif_api import RLAIFJob, contract, resolve_stage_configs

from .settings import WORKSPACE_MOUNT, Settings

LABEL_JOB = "rlaif.dev/job"
LABEL_STAGE = "rlaif.dev/stage"
LABEL_ATTEMPT = "rlaif.dev/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "rlaif.dev/component"
LABEL_SERVER = "rlaif.dev/server"  # on the labeler server's pods: its Deployment's name
LABELER_SERVER_COMPONENT = "labeler-server"
ANNOTATION_JOB_NAME = "rlaif.dev/job-name"  # the full RLAIFJob name (labels are capped at 63 chars)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGER = "rlaif-operator"

CONTAINER_NAME = "trainer"
CONFIG_DIR = "/etc/rlaif"
TERMINATION_LOG = contract.TERMINATION_LOG
CONFIG_VOLUME = "rlaif-config"
WORKSPACE_VOLUME = "rlaif-workspace"
SHM_VOLUME = "rlaif-dshm"
RESERVED_VOLUMES = frozenset({CONFIG_VOLUME, WORKSPACE_VOLUME, SHM_VOLUME})
API_KEY_ENV = contract.ENV_LABELER_API_KEY
JUDGE_API_KEY_ENV = contract.ENV_JUDGE_API_KEY
DEFAULT_PVC_SIZE = "20Gi"
MAX_NAME = 63  # a Job's name becomes its pods' job-name label value, so it must be a DNS label
NONROOT_UID = 1000
METRICS_PORT_NAME = "metrics"  # the chart's PodMonitor scrapes this port (trainer.podMonitor.portName)


@dataclass(frozen=True)
class Owner:
    """The identity of the RLAIFJob that owns the children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# --------------------------------------------------------------------------------------------------
# names and labels
# --------------------------------------------------------------------------------------------------


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded_name(base: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """``base + suffix`` if it fits in ``limit`` characters, else a truncated base, a hash of the
    full name, and the suffix. The result is a valid DNS label when base and suffix are."""
    full = base + suffix
    if len(full) <= limit:
        return full
    digest = _digest(full)
    keep = limit - len(suffix) - len(digest) - 1
    head = re.sub(r"[-.]+$", "", base[: max(keep, 0)].replace(".", "-"))
    return f"{head}-{digest}{suffix}" if head else f"{digest}{suffix}"[:limit]


def job_label_value(job_name: str) -> str:
    """The ``rlaif.dev/job`` label value: the RLAIFJob name, hashed down when over 63 characters."""
    return bounded_name(job_name)


def stage_job_name(job_name: str, stage: str, attempt: int) -> str:
    """``<job>-<stage>-<attempt>``, truncated with a hash to stay a 63-character DNS label."""
    return bounded_name(job_name.replace(".", "-"), f"-{stage}-{attempt}")


def configmap_name(job_name: str) -> str:
    return bounded_name(job_name, "-config", limit=253)


def pvc_name(job_name: str) -> str:
    return bounded_name(job_name, "-workspace", limit=253)


def labeler_server_name(job_name: str) -> str:
    """``<job>-labeler``: the operator-run labeler server's Deployment and Service (a DNS-1035 label,
    as a Service's name must start with a letter)."""
    base = job_name.replace(".", "-")
    if not base[:1].isalpha():
        base = "s" + base
    return bounded_name(base, "-labeler")


LABELER_SERVER_PORT = 8000


def labeler_server_endpoint(job_name: str) -> str:
    """The URL the stages call; the Service's short name resolves in the pods' own namespace."""
    return f"http://{labeler_server_name(job_name)}:{LABELER_SERVER_PORT}/v1"


def owner_labels(owner: Owner) -> dict[str, str]:
    return {LABEL_JOB: job_label_value(owner.name), LABEL_MANAGED_BY: MANAGER}


def object_metadata(owner: Owner, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The metadata of an object the job owns: its labels, its full name, and its owner reference."""
    return _metadata(owner, name, labels)


def _metadata(owner: Owner, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**owner_labels(owner), **(labels or {})},
        "annotations": {ANNOTATION_JOB_NAME: owner.name},
        "ownerReferences": [owner.reference()],
    }


# --------------------------------------------------------------------------------------------------
# ConfigMap and PVC
# --------------------------------------------------------------------------------------------------


def stage_configs(job: RLAIFJob, settings: Settings) -> dict[str, str]:
    """``{"<stage>.json": config}`` for every listed stage, resolved against the workspace mount.

    The mutable run-policy fields (suspend, TTL) are reset in the copy the pods see, so toggling
    them never changes the ConfigMap.
    """
    frozen = job.model_copy(deep=True)
    frozen.spec.run_policy.suspend = False
    frozen.spec.run_policy.ttl_seconds_after_finished = None
    configs = resolve_stage_configs(frozen, settings.workspace_root)
    for config in configs.values():
        # labeler.server: the stages call the server the operator runs (the judge too, when it is
        # the labeler's copy), as an endpoint; the server's own spec is the operator's business.
        for labeler in (config.spec.labeler, config.spec.evaluation.judge):
            if labeler is not None and labeler.server is not None:
                labeler.endpoint, labeler.server = labeler_server_endpoint(job.metadata.name), None
    return {f"{stage}.json": config.to_json() for stage, config in configs.items()}


def config_hash(data: dict[str, str]) -> str:
    return _digest(json.dumps(data, sort_keys=True), 16)


def build_configmap(job: RLAIFJob, owner: Owner, settings: Settings) -> dict[str, Any]:
    data = stage_configs(job, settings)
    meta = _metadata(owner, configmap_name(owner.name))
    meta["annotations"]["rlaif.dev/config-hash"] = config_hash(data)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def wants_pvc(job: RLAIFJob) -> bool:
    """A claim is created when ``storage.size`` is set or no existing claim is named."""
    storage = job.spec.storage
    return storage.size is not None or storage.persistent_volume_claim is None


def workspace_claim_name(job: RLAIFJob, owner: Owner) -> str:
    claim = job.spec.storage.persistent_volume_claim
    return claim.claim_name if claim is not None else pvc_name(owner.name)


def build_pvc(job: RLAIFJob, owner: Owner) -> dict[str, Any] | None:
    if not wants_pvc(job):
        return None
    storage = job.spec.storage
    spec: dict[str, Any] = {
        "accessModes": list(storage.access_modes),
        "resources": {"requests": {"storage": str(storage.size or DEFAULT_PVC_SIZE)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(owner, pvc_name(owner.name)),
        "spec": spec,
    }


# --------------------------------------------------------------------------------------------------
# stage Jobs
# --------------------------------------------------------------------------------------------------


def _resources(job: RLAIFJob, stage: str, settings: Settings) -> tuple[dict[str, Any], int]:
    res = job.spec.resources.for_stage(stage)
    amounts = resource_amounts(res, settings)
    gpus = res.gpus or 0
    if not amounts:
        return {}, gpus
    # requests == limits: Guaranteed QoS, and extended resources (GPUs) require it anyway.
    return {"requests": dict(amounts), "limits": dict(amounts)}, gpus


def resource_amounts(res: api.ResourceSpec, settings: Settings) -> dict[str, str]:
    """The container resource amounts of ``res`` (GPUs under the cluster's GPU resource name)."""
    amounts: dict[str, str] = {}
    if res.cpu is not None:
        amounts["cpu"] = str(res.cpu)
    if res.memory is not None:
        amounts["memory"] = str(res.memory)
    if res.ephemeral_storage is not None:
        amounts["ephemeral-storage"] = str(res.ephemeral_storage)
    if res.gpus:
        amounts[settings.gpu_resource_name] = str(res.gpus)
    return amounts


def stage_command(
    stage: str,
    gpus: int,
    metrics_port: int = 0,
    *,
    nodes: int = 1,
    node_rank: str = "0",
    main_process_ip: str = "127.0.0.1",
) -> list[str]:
    config = f"{CONFIG_DIR}/{stage}.json"
    args = [
        stage,
        contract.FLAG_CONFIG,
        config,
        contract.FLAG_TERMINATION_LOG,
        TERMINATION_LOG,
        contract.FLAG_NO_PROGRESS,
    ]
    if metrics_port:
        args += [contract.FLAG_METRICS_PORT, str(metrics_port)]
    return contract.launch_command(
        args, gpus_per_node=gpus, nodes=nodes, node_rank=node_rank, main_process_ip=main_process_ip
    )


def _secret_env(name: str, ref: api.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_placement(job: RLAIFJob, settings: Settings) -> dict[str, Any]:
    """Where and at what priority the job's pods run (stage pods and the labeler server's): the
    priority class, podTemplate's node selector, tolerations (after the operator's defaults),
    affinity and image pull secrets."""
    tpl = job.spec.pod_template or api.PodTemplateOverrides()
    placement: dict[str, Any] = {}
    if job.spec.run_policy.priority_class_name:
        placement["priorityClassName"] = job.spec.run_policy.priority_class_name
    if tpl.node_selector:
        placement["nodeSelector"] = dict(tpl.node_selector)
    tolerations = [dict(t) for t in settings.default_tolerations] + [
        t.to_wire() for t in tpl.tolerations or []
    ]
    if tolerations:
        placement["tolerations"] = tolerations
    if tpl.affinity:
        placement["affinity"] = dict(tpl.affinity)
    if tpl.image_pull_secrets:
        placement["imagePullSecrets"] = [s.to_wire() for s in tpl.image_pull_secrets]
    return placement


def build_stage_job(
    job: RLAIFJob, owner: Owner, stage: str, attempt: int, settings: Settings, image: str
) -> dict[str, Any]:
    """The batch/v1 Job for one attempt of one stage.

    ``backoffLimit: 0``: the operator counts attempts itself, with its own backoff, and reads each
    attempt's exit code to tell permanent from retryable failures.
    """
    spec = job.spec
    tpl = spec.pod_template or api.PodTemplateOverrides()
    name = stage_job_name(owner.name, stage, attempt)
    own_labels = {**owner_labels(owner), LABEL_STAGE: stage, LABEL_ATTEMPT: str(attempt)}
    queue = spec.run_policy.queue_name or settings.default_queue_name

    resources, gpus = _resources(job, stage, settings)

    env: list[dict[str, Any]] = [
        {"name": contract.ENV_STAGE, "value": stage},
        {"name": contract.ENV_JOB, "value": owner.name},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{WORKSPACE_MOUNT}/.cache/huggingface"},
        {"name": contract.ENV_CACHE_DIR, "value": f"{WORKSPACE_MOUNT}/.cache/rlaif"},
    ]
    if spec.labeler is not None and spec.labeler.api_key_secret_ref is not None:
        env.append(_secret_env(API_KEY_ENV, spec.labeler.api_key_secret_ref))
    judge = spec.evaluation.judge
    if judge is not None and judge.api_key_secret_ref is not None:
        env.append(_secret_env(JUDGE_API_KEY_ENV, judge.api_key_secret_ref))
    reserved_env = {e["name"] for e in env}
    for var in tpl.env or []:
        if var.name not in reserved_env:
            env.append(var.to_wire())

    storage = spec.storage
    workspace_mount: dict[str, Any] = {"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_MOUNT}
    if storage.sub_path:
        workspace_mount["subPath"] = storage.sub_path
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        workspace_mount,
    ]
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": configmap_name(owner.name)}},
        {"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": workspace_claim_name(job, owner)}},
    ]
    own_shm = any(m.mount_path == "/dev/shm" for m in tpl.volume_mounts or [])  # e.g. with a sizeLimit
    if gpus > 1 and not own_shm:  # NCCL needs more shared memory than the runtime's 64 MiB default
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    for vol in tpl.volumes or []:
        if vol.name not in RESERVED_VOLUMES:
            volumes.append(vol.to_wire())
    for mount in tpl.volume_mounts or []:
        if mount.name not in RESERVED_VOLUMES:
            mounts.append(mount.to_wire())

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": stage_command(stage, gpus, settings.trainer_metrics_port),
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.trainer_metrics_port:
        container["ports"] = [
            {"name": METRICS_PORT_NAME, "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}
        ]
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    sa = tpl.service_account_name or settings.trainer_service_account
    if sa:
        pod_spec["serviceAccountName"] = sa
    pod_spec.update(pod_placement(job, settings))

    pod_annotations = {**(tpl.annotations or {}), ANNOTATION_JOB_NAME: owner.name}
    pod_labels = {**(tpl.labels or {}), **own_labels}

    job_labels = dict(own_labels)
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    meta = _metadata(owner, name, job_labels)
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        # A pod's replacement only once it has stopped (phase Failed), not while it terminates: when
        # Kueue readmits a preempted stage, the old pod may still run out its grace period (the
        # trainer, PID 1 in its container, does not die of SIGTERM), and two trainers would write
        # the same checkpoints and metrics (seen on the real node: a step logged twice).
        "podReplacementPolicy": "Failed",
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
    }
    shards = spec.resources.shards(stage)
    if shards > 1:
        # One pod per shard, all at once; each reads its shard from JOB_COMPLETION_INDEX, which the
        # Job controller sets in an Indexed Job. backoffLimit 0 still fails the attempt on the
        # first failed pod, and the retry resumes every shard from what it wrote.
        job_spec.update({"completionMode": "Indexed", "completions": shards, "parallelism": shards})
    if queue:
        job_spec["suspend"] = True  # Kueue admits (unsuspends) the Job when quota allows
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


# --------------------------------------------------------------------------------------------------
# multi-node stages: a JobSet
# --------------------------------------------------------------------------------------------------

JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
JOBSET_KIND = "JobSet"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # JobSet sets it on its Jobs and pods
REPLICATED_JOB = "node"  # the JobSet's one replicated Job; its pods are the stage's nodes
# The JobSet webhook refuses a JobSet whose longest pod name, <jobset>-node-0-<last index>-<5
# random>, is over 63 characters, so the name leaves room for that (3 digits: nodes <= 128).
MAX_JOBSET_NAME = MAX_NAME - len(f"-{REPLICATED_JOB}-0-127-abcde")
# The completion index the Job controller gives each pod of an Indexed Job (an env var, which the
# kubelet substitutes into the command): the node rank.
NODE_RANK = "$(JOB_COMPLETION_INDEX)"


def stage_nodes(job: RLAIFJob, stage: str) -> int:
    """Pods (nodes) the stage spans: ``resources.<stage>.nodes``; above 1 it runs as a JobSet."""
    return job.spec.resources.for_stage(stage).nodes


def stage_jobset_name(job_name: str, stage: str, attempt: int) -> str:
    """``<job>-<stage>-<attempt>`` like a stage Job, hashed down to :data:`MAX_JOBSET_NAME`, and
    starting with a letter (JobSet's names are DNS-1035 labels; an RLAIFJob's may start with a digit)."""
    base = job_name.replace(".", "-")
    if not base[:1].isalpha():
        base = "j" + base
    return bounded_name(base, f"-{stage}-{attempt}", limit=MAX_JOBSET_NAME)


def stage_child_name(job: RLAIFJob, job_name: str, stage: str, attempt: int) -> str:
    """The name of the child that runs one attempt: a JobSet's for a multi-node stage, else a Job's."""
    if stage_nodes(job, stage) > 1:
        return stage_jobset_name(job_name, stage, attempt)
    return stage_job_name(job_name, stage, attempt)


def rank_zero_host(jobset_name: str) -> str:
    """Rank 0's stable hostname: JobSet names pod ``i`` of Job ``j`` ``<jobset>-<rjob>-<j>-<i>`` in the
    subdomain of its headless Service, named after the JobSet; the pods' DNS search path (their
    namespace's ``svc.<cluster domain>``) completes it, whatever the cluster domain is."""
    return f"{jobset_name}-{REPLICATED_JOB}-0-0.{jobset_name}"


def build_stage_jobset(
    job: RLAIFJob, owner: Owner, stage: str, attempt: int, settings: Settings, image: str
) -> dict[str, Any]:
    """The JobSet for one attempt of a multi-node stage: one replicated Job of ``nodes`` Indexed
    pods, each the stage pod of :func:`build_stage_job`, with one launcher per node.

    The operator's retry accounting stays as for a Job: the child Job has ``backoffLimit: 0`` (a
    pod that fails fails the Job, and the Job controller stops the other ranks), and the JobSet's
    ``failurePolicy.maxRestarts: 0`` fails the JobSet with it instead of recreating its Jobs. So a
    rank that dies fails the attempt once, the operator's backoff and retry budget decide what
    comes next, and the failed rank's exit code (EXIT_BAD_INPUT or not) says whether to retry.
    ``successPolicy`` is all pods: a stage is done when every rank finished.
    """
    nodes = stage_nodes(job, stage)
    name = stage_jobset_name(owner.name, stage, attempt)
    single = build_stage_job(job, owner, stage, attempt, settings, image)
    template = single["spec"]["template"]
    container = next(c for c in template["spec"]["containers"] if c["name"] == CONTAINER_NAME)
    _, gpus = _resources(job, stage, settings)
    container["command"] = stage_command(
        stage,
        gpus,
        settings.trainer_metrics_port,
        nodes=nodes,
        node_rank=NODE_RANK,
        main_process_ip=rank_zero_host(name),
    )
    # Informational (a pod's ports are open whether listed or not): what rank 0 listens on.
    container["ports"] = [
        *(container.get("ports") or []),
        {"name": "rendezvous", "containerPort": contract.RENDEZVOUS_PORT, "protocol": "TCP"},
    ]
    meta = single["metadata"]
    meta["name"] = name
    child = {
        "backoffLimit": 0,
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "template": template,
    }
    spec: dict[str, Any] = {
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": child}}],
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": 0},
        "successPolicy": {"operator": "All"},
    }
    if single["spec"].get("suspend"):
        spec["suspend"] = True  # Kueue admits (unsuspends) the JobSet when quota allows
    return {"apiVersion": JOBSET_API_VERSION, "kind": JOBSET_KIND, "metadata": meta, "spec": spec}


def build_stage_child(
    job: RLAIFJob, owner: Owner, stage: str, attempt: int, settings: Settings, image: str
) -> dict[str, Any]:
    """What runs one attempt of a stage: a JobSet when the stage spans nodes, else a Job."""
    if stage_nodes(job, stage) > 1:
        return build_stage_jobset(job, owner, stage, attempt, settings, image)
    return build_stage_job(job, owner, stage, attempt, settings, image)
