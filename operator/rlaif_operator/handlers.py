"""kopf wiring: indexes of RLAIFJobs and their children, thin event handlers, operator settings.

Handlers do no API calls and no decisions: index handlers keep in-memory views of the RLAIFJobs,
their stage Jobs (keyed by the owning RLAIFJob), stage Pods (keyed by their Job) and PVC names
(keyed by namespace); event handlers enqueue the owning RLAIFJob into the
:class:`~rlaif_operator.controller.Controller`, which runs the pure core and applies its plan.
Because kopf fills every index before it calls any handler, a restarted operator sees all
existing children before it plans anything: it adopts instead of duplicating.

API access (least privilege; mirrored by :data:`rlaif_operator.rbac.RBAC_RULES`, which the Helm
chart's Role/ClusterRole should copy):

==========================  ====================================  ================================
resource                    verbs                                 why
==========================  ====================================  ================================
rlaif.dev rlaifjobs         list, watch, delete                   watch/index; TTL deletion
rlaif.dev rlaifjobs/status  patch                                 merge-patch of the status
batch jobs                  list, watch, create, delete           stage attempts; suspend/deadline
apps deployments            list, watch, create, delete           labeler.server (the served labeler)
services                    create, delete                        labeler.server's endpoint
jobset.x-k8s.io jobsets     list, watch, create, delete           multi-node stage attempts (nodes > 1)
pods                        list, watch                           exit codes, termination messages
configmaps                  get, create, patch                    resolved stage configs
persistentvolumeclaims      list, watch, create                   claim existence; owned workspace
events                      create                                phase/stage/retry/failure events
==========================  ====================================  ================================

Optional: apiextensions.k8s.io customresourcedefinitions list/watch (kopf notices the CRD being
installed after start-up), and namespaces list/watch when ``--namespace`` is a glob pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import kopf

import rlaif_api as api

from .builders import LABEL_COMPONENT, LABEL_STAGE, LABELER_SERVER_COMPONENT
from .controller import Controller, Indexes, job_owner_key, pod_owner_key
from .kube import KubeClient
from .metrics import Metrics
from .observe import summarize_job, summarize_jobset, summarize_pod, summarize_server, summarize_server_pod
from .settings import Settings

log = logging.getLogger("rlaif_operator")
PREFIX = "rlaif.dev"


class EndlessBackoff:
    """Delays 1, 2, 4, ... seconds capped at ``cap``, never exhausted; every iteration starts afresh.

    Deliberately not ``Sized``: kopf treats a sized sequence as a retry budget.
    """

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap

    def __iter__(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No diff base: this operator has no on.create/update/field handlers, daemons or timers,
    the only kopf features that read one. Building it deep-copied every watched object on every
    event, about a seventh of the operator's CPU under a burst of jobs.
    (tests/unit/operator/test_handlers.py fails if such a handler is ever registered.)"""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf hygiene: our own prefix, watch timeouts, endless capped retries, no chatty event posting."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    # Watches end server-side before the client gives up, so they are renewed cleanly; a
    # connection that goes quiet (e.g. the API server died) is noticed within a minute.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 60
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # kopf only lists and watches here (the controller has its own client). A watcher whose
    # retries run out dies while the process stays live, so retry for ever, like client-go's
    # reflector: a Role applied moments after the operator starts, or an API server outage,
    # heals by itself, and each failed try is logged at ERROR.
    settings.networking.error_backoffs = EndlessBackoff()
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    # The operator posts its own, meaningful events; kopf's per-handler log events would double
    # the API traffic.
    settings.posting.enabled = False


def _controller(memo: Any) -> Controller:
    ctrl: Controller = memo.controller
    return ctrl


# --------------------------------------------------------------------------------------------------
# activities
# --------------------------------------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **kw: Any) -> None:
    rlaif_jobs, rlaif_stage_jobs = kw["rlaif_jobs"], kw["rlaif_stage_jobs"]
    rlaif_stage_pods, rlaif_claims = kw["rlaif_stage_pods"], kw["rlaif_claims"]
    rlaif_stage_jobsets = kw["rlaif_stage_jobsets"]
    servers, server_pods = kw["rlaif_labeler_servers"], kw["rlaif_labeler_server_pods"]
    configure_kopf(settings)

    op_settings: Settings = getattr(memo, "operator_settings", None) or Settings()
    metrics: Metrics = getattr(memo, "metrics", None) or Metrics()
    memo.metrics = metrics

    def client() -> KubeClient:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
        if info is None:
            raise kopf.PermanentError(
                "no credentials: neither an in-cluster service account nor a kubeconfig"
            )
        return KubeClient(info, on_request=metrics.api_request)

    indexes = Indexes(
        rlaif_jobs,
        rlaif_stage_jobs,
        rlaif_stage_pods,
        rlaif_claims,
        jobsets=rlaif_stage_jobsets,
        servers=servers,
        server_pods=server_pods,
    )
    controller = Controller(
        client(), indexes, op_settings, metrics, workers=getattr(memo, "workers", 64), relogin=client
    )
    await controller.probe_jobset_api()  # before the first pass: multi-node stages need it
    controller.start()
    memo.controller = controller
    log.info(
        "rlaif-operator started: trainer image %s, GPU resource %s",
        op_settings.trainer_image or "(spec.image only)",
        op_settings.gpu_resource_name,
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    ctrl = getattr(memo, "controller", None)
    if ctrl is not None:
        await ctrl.stop()


@kopf.on.probe(id="queueDepth")
def queue_depth(memo: Any, **_: Any) -> int:
    ctrl = getattr(memo, "controller", None)
    return ctrl.depth() if ctrl is not None else 0


# --------------------------------------------------------------------------------------------------
# indexes (in-memory views; no list calls in hot paths)
# --------------------------------------------------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def rlaif_jobs(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
    return {(kw["namespace"], kw["name"]): dict(body)}


@kopf.index("batch", "v1", "jobs", labels={LABEL_STAGE: kopf.PRESENT})
async def rlaif_stage_jobs(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key, info = job_owner_key(body), summarize_job(dict(body))
    return {key: info} if key is not None and info is not None else {}


@kopf.index("jobset.x-k8s.io", "v1alpha2", "jobsets", labels={LABEL_STAGE: kopf.PRESENT})
async def rlaif_stage_jobsets(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Multi-node stages' JobSets, beside the stage Jobs. Without the JobSet CRD kopf watches
    nothing here and the index stays empty; it starts watching when the CRD is installed."""
    key, info = job_owner_key(body), summarize_jobset(dict(body))
    return {key: info} if key is not None and info is not None else {}


@kopf.index("v1", "pods", labels={LABEL_STAGE: kopf.PRESENT})
async def rlaif_stage_pods(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
    info = summarize_pod(dict(body))
    return {(kw["namespace"], info.job_name): info} if info is not None else {}


SERVER = {LABEL_COMPONENT: LABELER_SERVER_COMPONENT}


@kopf.index("apps", "v1", "deployments", labels=SERVER)
async def rlaif_labeler_servers(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """labeler.server's Deployments, by owning RLAIFJob."""
    key, info = job_owner_key(body), summarize_server(dict(body))
    return {key: info} if key is not None and info is not None else {}


@kopf.index("v1", "pods", labels=SERVER)
async def rlaif_labeler_server_pods(body: kopf.Body, **kw: Any) -> dict[Any, Any]:
    """The labeler servers' pods' states, by Deployment (a stage waiting for one shows why)."""
    got = summarize_server_pod(dict(body))
    return {(kw["namespace"], got[0]): got[1]} if got is not None else {}


@kopf.index("v1", "persistentvolumeclaims")
async def rlaif_claims(**kw: Any) -> dict[Any, Any]:
    return {kw["namespace"]: kw["name"]}


# --------------------------------------------------------------------------------------------------
# events -> work queue
# --------------------------------------------------------------------------------------------------


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def rlaif_job_event(event: Any, memo: Any, **kw: Any) -> None:
    ctrl = _controller(memo)
    key = (kw["namespace"], kw["name"])
    if event.get("type") == "DELETED":
        ctrl.forget(key, kw.get("uid"))
    elif not ctrl.is_own_echo(key, event.get("object") or {}):
        ctrl.enqueue(key)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_STAGE: kopf.PRESENT})
async def stage_job_event(event: Any, body: kopf.Body, memo: Any, **kw: Any) -> None:
    deleted = event.get("type") == "DELETED"
    info = summarize_job(dict(body))
    _controller(memo).child_event(
        job_owner_key(body), kw.get("uid") or "", info.for_queueing() if info else None, deleted
    )


@kopf.on.event("jobset.x-k8s.io", "v1alpha2", "jobsets", labels={LABEL_STAGE: kopf.PRESENT})
async def stage_jobset_event(event: Any, body: kopf.Body, memo: Any, **kw: Any) -> None:
    deleted = event.get("type") == "DELETED"
    info = summarize_jobset(dict(body))
    _controller(memo).child_event(
        job_owner_key(body), kw.get("uid") or "", info.for_queueing() if info else None, deleted
    )


@kopf.on.event("v1", "pods", labels={LABEL_STAGE: kopf.PRESENT})
async def stage_pod_event(event: Any, body: kopf.Body, memo: Any, **kw: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _controller(memo).child_event(
        pod_owner_key(body), kw.get("uid") or "", summarize_pod(dict(body)), deleted
    )


@kopf.on.event("apps", "v1", "deployments", labels=SERVER)
async def labeler_server_event(event: Any, body: kopf.Body, memo: Any, **kw: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _controller(memo).child_event(
        job_owner_key(body), kw.get("uid") or "", summarize_server(dict(body)), deleted
    )


@kopf.on.event("v1", "pods", labels=SERVER)
async def labeler_server_pod_event(event: Any, body: kopf.Body, memo: Any, **kw: Any) -> None:
    deleted = event.get("type") == "DELETED"
    _controller(memo).child_event(
        pod_owner_key(body), kw.get("uid") or "", summarize_server_pod(dict(body)), deleted
    )


@kopf.on.event("v1", "persistentvolumeclaims")
async def claim_event(memo: Any, **kw: Any) -> None:
    """A claim appeared or went: wake the jobs of that namespace that have not started yet."""
    ctrl = _controller(memo)
    namespace = kw["namespace"]
    for key, store in list(kw["rlaif_jobs"].items()):
        if key[0] != namespace:
            continue
        for body in store:
            if ((body.get("status") or {}).get("phase") or "Pending") == "Pending":
                ctrl.enqueue(key)
