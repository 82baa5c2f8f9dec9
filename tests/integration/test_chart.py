"""The Helm chart against the real test control plane: lint, render, server-side apply, and Pod
Security "restricted" admission for the operator Deployment and for stage Jobs.

The ServiceMonitor/PodMonitor CRDs (Prometheus Operator) do not exist on the test API server; the
monitoring variant installs minimal stand-ins for them (schema-less ``spec``) so that server-side
apply can accept those objects. Everything else is applied as rendered.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.cluster.fixtures import create_namespace
from tests.integration.chart_support import (
    CHART,
    MONITORING_CRDS,
    PSS_RESTRICTED,
    delete_namespace,
    docs_of,
    ensure_crds,
    helm_path,
    render,
    unique,
)

pytestmark = pytest.mark.integration

VARIANTS = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={{{a},{b}}}"],
    "monitoring": [
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "trainer.podMonitor.enabled=true",
        "--set", "grafana.dashboard.enabled=true",
        "--set", "rbac.watchCRDs=true",
        "--set", "rbac.ownerReferencesPermissionEnforcement=true",
    ],
    "crds-off": ["--set", "crds.install=false", "--set", "kueue.defaultQueueName=gpu", "--set", "log.format=plain"],
}  # fmt: skip


def _args(variant: str, a: str, b: str) -> list[str]:
    return [arg.format(a=a, b=b) if "{a}" in arg else arg for arg in VARIANTS[variant]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint(variant):
    proc = subprocess.run(
        [str(helm_path()), "lint", "--strict", str(CHART), *_args(variant, "team-a", "team-b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_apply_server_side(cluster: Cluster, variant):
    """Every rendered object is accepted by the API server with server-side apply (dry run)."""
    release_ns, a, b = unique("rlaif-sys"), unique("team-a"), unique("team-b")
    for ns in (release_ns, a, b):
        create_namespace(cluster, ns)
    cluster.wait_for(  # the helm test Pod runs as the namespace's default ServiceAccount
        "default ServiceAccount",
        lambda: cluster.get(f"/api/v1/namespaces/{release_ns}/serviceaccounts/default"),
        timeout=30,
    )
    try:
        if variant == "monitoring":
            ensure_crds(cluster, MONITORING_CRDS)
        text = render(unique("rel"), release_ns, *_args(variant, a, b))
        kinds = sorted({d["kind"] for d in docs_of(text)})
        expected = {"ServiceAccount", "Service", "Deployment", "Pod"}
        if variant != "crds-off":
            expected.add("CustomResourceDefinition")
        if variant == "monitoring":
            expected |= {"ServiceMonitor", "PodMonitor", "ConfigMap"}
        expected |= (
            {"Role", "RoleBinding"} if variant == "namespaced" else {"ClusterRole", "ClusterRoleBinding"}
        )
        assert set(kinds) == expected
        proc = cluster.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=helm-test",
            "-f",
            "-",
            input=text,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        applied = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(applied) == len(docs_of(text)), proc.stdout
        assert "Warning" not in proc.stderr, proc.stderr
    finally:
        for ns in (release_ns, a, b):
            delete_namespace(cluster, ns)


# ------------------------------------------------------------------------------------------------
# Pod Security "restricted", enforced by the API server
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def restricted_namespace(cluster: Cluster):
    name = unique("restricted")
    create_namespace(cluster, name, PSS_RESTRICTED, wait_for_default_service_account=True)
    try:
        yield name
    finally:
        delete_namespace(cluster, name)


def _pod_from_template(template: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"].get("labels", {})},
        "spec": copy.deepcopy(template["spec"]),
    }


def _create_dry_run(cluster: Cluster, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)


def test_enforcement_is_active(cluster: Cluster, restricted_namespace):
    """Negative control: the labelled namespace really rejects a pod that breaks "restricted"."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": restricted_namespace},
        "spec": {
            "containers": [{"name": "c", "image": "busybox:1.36.1", "securityContext": {"privileged": True}}]
        },
    }
    proc = _create_dry_run(cluster, pod)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


def test_operator_deployment_passes_restricted(cluster: Cluster, restricted_namespace):
    text = render("rel", restricted_namespace)
    (deployment,) = [d for d in docs_of(text) if d["kind"] == "Deployment"]
    sa = [
        d for d in docs_of(text) if d["kind"] == "ServiceAccount" and d["metadata"]["name"] != "rlaif-trainer"
    ]
    cluster.apply(sa[0])  # the pod's ServiceAccount must exist for the Pod dry run
    # The Deployment itself: PodSecurity only warns on workload objects ...
    proc = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(deployment), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr
    # ... and enforces on the pods it would create.
    proc = _create_dry_run(
        cluster, _pod_from_template(deployment["spec"]["template"], restricted_namespace, "operator")
    )
    assert proc.returncode == 0, proc.stderr
    (test_pod,) = [d for d in docs_of(text) if d["kind"] == "Pod"]
    proc = _create_dry_run(cluster, test_pod)
    assert proc.returncode == 0, f"helm test pod: {proc.stderr}"


@pytest.mark.parametrize("gpus", [1, 2])
def test_stage_job_passes_restricted(cluster: Cluster, restricted_namespace, gpus):
    """A stage Job from the operator's own builder (GPU requests included) passes "restricted"."""
    builders = pytest.importorskip("rlaif_operator.builders")
    from rlaif_api import load_job
    from rlaif_operator.settings import Settings
    from tests.integration.chart_support import ROOT

    job = load_job(ROOT / "examples" / "minimal.yaml")
    job.metadata.namespace = restricted_namespace
    job.spec.resources.default.gpus = gpus
    owner = builders.Owner(
        name=job.metadata.name, namespace=restricted_namespace, uid="00000000-0000-0000-0000-000000000001"
    )
    settings = Settings(
        trainer_image="ghcr.io/rlaif-dev/rlaif-trainer:0.1.0",
        trainer_service_account="rlaif-trainer",
        default_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "rlaif-trainer", "namespace": restricted_namespace},
            "automountServiceAccountToken": False,
        }
    )
    manifest = builders.build_stage_job(job, owner, "rl", 1, settings, settings.trainer_image)
    manifest["metadata"].pop("ownerReferences", None)  # the owner does not exist in this test
    limits = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] in (gpus, str(gpus))
    proc = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr
    proc = _create_dry_run(
        cluster, _pod_from_template(manifest["spec"]["template"], restricted_namespace, f"stage-{gpus}")
    )
    assert proc.returncode == 0, proc.stderr


def test_rlaifjobs_in_the_docs_are_accepted_by_the_api_server(cluster: Cluster):
    """Every RLAIFJob manifest shown in docs/ passes the CRD's schema and CEL rules (server dry run)."""
    import re

    import yaml

    from tests.integration.chart_support import ROOT

    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=docs-test",
        "-f",
        str(ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml"),
    )
    ensure_crds(cluster, [yaml.safe_load((ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml").read_text())])
    ns = unique("docs")
    create_namespace(cluster, ns)
    found = 0
    try:
        for doc in sorted((ROOT / "docs").glob("*.md")):
            for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
                obj = yaml.safe_load(block)
                if not isinstance(obj, dict) or obj.get("kind") != "RLAIFJob":
                    continue
                found += 1
                obj["metadata"]["namespace"] = ns
                proc = cluster.kubectl(
                    "create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
                )
                assert proc.returncode == 0, f"{doc.name}: {proc.stderr}"
        assert found >= 1
    finally:
        delete_namespace(cluster, ns)
