"""The exact API access the operator needs (least privilege), for the Helm chart's (Cluster)Role.

Every rule below is used by :mod:`rlaif_operator.handlers` / :mod:`rlaif_operator.controller`:

* ``rlaifjobs``: list/watch (kopf's watch and index), delete (``ttlSecondsAfterFinished``).
  The operator never patches the RLAIFJob's metadata or spec: it uses no kopf change handlers,
  finalizers or diff-base annotations, so no ``patch`` and no ``rlaifjobs/finalizers``.
* ``rlaifjobs/status``: patch (JSON merge patch on the status subresource).
* ``batch/jobs``: list/watch (index), create (stage attempts), delete (suspend, deadline).
* ``jobset.x-k8s.io/jobsets``: the same, for multi-node stages (``resources.<stage>.nodes > 1``). Harmless
  where JobSet is not installed: kopf then watches nothing there, and such a stage waits with
  ``JobSetNotInstalled``.
* ``pods``: list/watch (index of stage pods: exit codes and termination messages; and of the
  labeler server's pods: why one is not ready).
* ``apps/deployments``: list/watch (index), create, delete: the labeler server (``labeler.server``),
  up while a stage that asks the labeler runs.
* ``services``: create, delete: the labeler server's endpoint.
* ``configmaps``: create (resolved stage configs), get + patch (update them if the spec changed
  before the job started).
* ``persistentvolumeclaims``: list/watch (does the named workspace claim exist?), create (the
  job-owned workspace claim).
* ``events``: create (phase changes, stage start/end, retries, failures).
* ``customresourcedefinitions`` (cluster-scoped, optional): list/watch lets kopf notice the CRD
  being installed or upgraded after the operator started; without it kopf logs a warning once and
  serves the resources it found at start-up.
* ``namespaces``: list/watch, only when ``--namespace`` is given a glob pattern (kopf watches the
  namespaces to find matches); not needed with exact names or ``--all-namespaces``.
"""

from __future__ import annotations

from typing import Any

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["rlaif.dev"], "resources": ["rlaifjobs"], "verbs": ["list", "watch", "delete"]},
    {"apiGroups": ["rlaif.dev"], "resources": ["rlaifjobs/status"], "verbs": ["patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "delete"]},
    {
        "apiGroups": ["jobset.x-k8s.io"],
        "resources": ["jobsets"],
        "verbs": ["list", "watch", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["list", "watch", "create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

NAMESPACE_PATTERN_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]

CLUSTER_DISCOVERY_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
]


def role_rules(namespace_patterns: bool = False) -> list[dict[str, Any]]:
    return RBAC_RULES + (NAMESPACE_PATTERN_RULES if namespace_patterns else [])


def leader_election_rules(lease: str) -> list[dict[str, Any]]:
    """With ``--leader-election LEASE``, in the Lease's namespace only (rlaif_operator.leader):
    get and update that one Lease (read it, take it, renew it, release it), and create leases,
    which RBAC cannot narrow by name (the name of an object being created is not known to it)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
    ]
