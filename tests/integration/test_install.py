"""The whole install: ``helm install`` of the chart into the test control plane, then the operator
started locally (``python -m rlaif_operator``, with the rendered Deployment's own flags and
environment) under the chart's ServiceAccount identity, then ``examples/minimal.yaml`` applied
into a namespace that enforces Pod Security "restricted". kwok runs the stage pods (and simulates
the Deployment's pod, which does nothing). The job must reach ``Succeeded``.

The same run with one RBAC rule removed must fail visibly (the job never finishes and the
operator's log shows the API server's 403), which shows the chart's rules are all needed.

The operator authenticates with a token from the TokenRequest API for the chart's ServiceAccount,
so the API server authorizes it exactly as it would the in-cluster pod.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import Cluster
from tests.cluster.fixtures import create_namespace
from tests.integration.chart_support import (
    CHART,
    PSS_RESTRICTED,
    ROOT,
    adopt_crd_for_release,
    can_i,
    delete_namespace,
    diagnostics,
    docs_of,
    fake_volume,
    helm,
    operator_command,
    running_operator,
    service_account_kubeconfig,
    unique,
    wait_healthy,
    wait_phase,
    whoami,
)

pytestmark = pytest.mark.integration

# Stage pods on kwok: finish after 0.3 s with exit code 0 and a summary as termination message.
KWOK_ANNOTATIONS = {
    "rlaif.dev/test-run-seconds": "0.3",
    "rlaif.dev/test-termination-message": json.dumps(
        {"ok": True, "accuracy": 0.75, "win_rate_vs_initial": 0.6}
    ),
}


@dataclass
class Install:
    release: str
    release_ns: str
    jobs_ns: str
    manifests: list[dict[str, Any]]
    kubeconfig: Path
    tmp: Path
    cluster: Cluster

    @property
    def deployment(self) -> dict[str, Any]:
        (d,) = [m for m in self.manifests if m["kind"] == "Deployment"]
        return d

    @property
    def service_account(self) -> str:
        return self.deployment["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.fixture(params=["namespaced"])
def install(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Install]:
    """The chart installed with helm, watching one restricted namespace (namespaced mode: a Role
    there), or every namespace (cluster mode: the chart's default ClusterRole)."""
    release, release_ns, jobs_ns = unique("rlaif"), unique("rlaif-system"), unique("jobs")
    mode_args = (
        ["--set", f"watchNamespaces={{{jobs_ns}}}"]
        if request.param == "namespaced"
        else ["--set", f"trainer.serviceAccount.extraNamespaces={{{jobs_ns}}}"]
    )
    create_namespace(cluster, jobs_ns, PSS_RESTRICTED)
    adopt_crd_for_release(cluster, release, release_ns)
    pv = unique("pv-workspace")
    fake_volume(cluster, pv)
    try:
        helm(
            cluster,
            "install", release, str(CHART),
            "--namespace", release_ns, "--create-namespace",
            *mode_args,
            "--set", "log.format=plain",
            "--timeout", "2m",
        )  # fmt: skip
        manifest = helm(cluster, "get", "manifest", release, "-n", release_ns).stdout
        inst = Install(
            release, release_ns, jobs_ns, docs_of(manifest), tmp_path / "sa.kubeconfig", tmp_path, cluster
        )
        service_account_kubeconfig(cluster, release_ns, inst.service_account, inst.kubeconfig)
        yield inst
    finally:
        helm(cluster, "uninstall", release, "-n", release_ns, "--wait=false", check=False)
        delete_namespace(cluster, jobs_ns)
        delete_namespace(cluster, release_ns)
        cluster.request("DELETE", f"/api/v1/persistentvolumes/{pv}")


def minimal_job(namespace: str) -> dict[str, Any]:
    """examples/minimal.yaml, with kwok's annotations added through podTemplate."""
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job["metadata"]["namespace"] = namespace
    job["spec"].setdefault("podTemplate", {}).setdefault("annotations", {}).update(KWOK_ANNOTATIONS)
    return job


def test_helm_install_objects(cluster: Cluster, install: Install):
    """What helm installed: the CRD is established, RBAC is namespaced, the trainer SA exists."""
    crd = cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rlaifjobs.rlaif.dev")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kinds = {m["kind"] for m in install.manifests}
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    role = cluster.get(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{install.jobs_ns}/roles/{install.deployment['metadata']['name']}"
    )
    assert role is not None
    for rule in role["rules"]:  # as stored by the API server: no wildcards anywhere
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    trainer_sa = cluster.get(f"/api/v1/namespaces/{install.jobs_ns}/serviceaccounts/rlaif-trainer")
    assert trainer_sa["automountServiceAccountToken"] is False
    deployment = cluster.get(
        f"/apis/apps/v1/namespaces/{install.release_ns}/deployments/{install.deployment['metadata']['name']}"
    )
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_upgrade_updates_and_uninstall_keeps_the_crd(cluster: Cluster, install: Install):
    """The CRD is a template: `helm upgrade` re-applies it; `helm uninstall` leaves it (resource-policy keep)."""
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rlaifjobs.rlaif.dev"
    # Simulate an old schema in the cluster: the upgrade must bring the chart's back.
    old = cluster.get(crd_path)
    description = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
    cluster.request(
        "PATCH",
        crd_path,
        [{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/description", "value": "stale"}],
        content_type="application/json-patch+json",
    )
    helm(
        cluster, "upgrade", install.release, str(CHART), "-n", install.release_ns, "--reuse-values",
        "--set", "log.level=debug",
    )  # fmt: skip
    crd = cluster.get(crd_path)
    assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] == description
    name = install.deployment["metadata"]["name"]
    deployment = cluster.get(f"/apis/apps/v1/namespaces/{install.release_ns}/deployments/{name}")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RLAIF_LOG_LEVEL"] == "debug"
    helm(cluster, "uninstall", install.release, "-n", install.release_ns, "--wait")
    assert cluster.get(f"/apis/apps/v1/namespaces/{install.release_ns}/deployments/{name}") is None
    assert cluster.get(crd_path) is not None, "helm uninstall deleted the CRD (and with it every RLAIFJob)"


def test_service_account_is_least_privilege(cluster: Cluster, install: Install):
    """The token really is the chart's ServiceAccount, with exactly the namespaced access it needs."""
    kc, ns = install.kubeconfig, install.jobs_ns
    assert can_i(cluster, kc, "create", "jobs.batch", ns)
    assert can_i(cluster, kc, "patch", "rlaifjobs.rlaif.dev/status", ns)
    assert can_i(cluster, kc, "watch", "pods", ns)
    # Not granted: other namespaces, secrets, pod creation, cluster-scoped objects, spec patches.
    assert not can_i(cluster, kc, "list", "rlaifjobs.rlaif.dev", "default")
    assert not can_i(cluster, kc, "create", "jobs.batch", install.release_ns)
    assert not can_i(cluster, kc, "get", "secrets", ns)
    assert not can_i(cluster, kc, "create", "pods", ns)
    assert not can_i(cluster, kc, "patch", "rlaifjobs.rlaif.dev", ns)
    assert not can_i(cluster, kc, "list", "nodes", ns)
    assert not can_i(cluster, kc, "create", "clusterroles.rbac.authorization.k8s.io", ns)
    assert not can_i(cluster, kc, "get", "persistentvolumeclaims", ns)  # list/watch only
    assert whoami(cluster, kc) == f"system:serviceaccount:{install.release_ns}:{install.service_account}"


@pytest.mark.parametrize("install", ["namespaced", "cluster"], indirect=True)
def test_minimal_example_succeeds_under_the_charts_identity(cluster: Cluster, install: Install):
    """The "done when" of the install: helm install, operator as the chart's SA, minimal.yaml Succeeded."""
    cmd, env, liveness, metrics_port = operator_command(install.deployment)
    log = install.tmp / "operator.log"
    job = minimal_job(install.jobs_ns)
    with running_operator(cmd, env, install.kubeconfig, log) as proc:
        wait_healthy(liveness, proc, log)
        cluster.apply(job)
        try:
            done = wait_phase(
                cluster, install.jobs_ns, job["metadata"]["name"], {"Succeeded", "Failed"}, timeout=180
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnostics(cluster, install.jobs_ns, log)}") from None
        assert done["status"]["phase"] == "Succeeded", diagnostics(cluster, install.jobs_ns, log)
        assert proc.poll() is None, "the operator exited"
        run_helm_test_script(install, liveness, metrics_port)
    status = done["status"]
    stages = status["stages"]
    assert [s for s in ("label", "reward", "rl", "evaluate") if stages[s]["state"] == "Succeeded"] == [
        "label", "reward", "rl", "evaluate"
    ]  # fmt: skip
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert (
        conditions["Succeeded"] == "True"
        and conditions["Ready"] == "True"
        and conditions["Failed"] == "False"
    )
    # Stage pods ran as the chart's trainer ServiceAccount, in the restricted namespace.
    pods = cluster.get(f"/api/v1/namespaces/{install.jobs_ns}/pods?labelSelector=rlaif.dev/job")["items"]
    assert pods and {p["spec"]["serviceAccountName"] for p in pods} == {"rlaif-trainer"}
    assert unexpected_forbidden(log.read_text(errors="replace")) == []


# With exact namespace names the operator turns kopf's namespace and CRD scanning off, so it asks
# for nothing cluster-scoped (docs/operator-guide.md). Any 403 is a missing rule, except writes
# refused in other tests' namespaces that are being deleted (cluster mode).
OPTIONAL_CLUSTER_READS = ("being terminated",)


def run_helm_test_script(install: Install, liveness: int, metrics_port: int) -> None:
    """Run the chart's `helm test` check against the local operator (instead of via the Service)."""
    (pod,) = [m for m in install.manifests if m["kind"] == "Pod"] or [None]
    if pod is None:  # `helm get manifest` leaves hooks out; render the hook from the release
        hooks = helm_hooks(install)
        (pod,) = [h for h in hooks if h["kind"] == "Pod"]
    script = pod["spec"]["containers"][0]["args"][0]
    service = f"{install.deployment['metadata']['name']}-metrics.{install.release_ns}.svc"
    assert service in script
    script = script.replace(f"http://{service}", "http://127.0.0.1")
    script = script.replace(":8081/", f":{liveness}/").replace(":8080/", f":{metrics_port}/")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def helm_hooks(install: Install) -> list[dict[str, Any]]:
    out = helm(install.cluster, "get", "hooks", install.release, "-n", install.release_ns).stdout
    return docs_of(out)


def unexpected_forbidden(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if ("403" in line or "Forbidden" in line) and not any(ok in line for ok in OPTIONAL_CLUSTER_READS)
    ]


# One rule (or one verb of a rule) taken away from the chart's Role, and the operator's request
# the API server then refuses. Each must stop the job from succeeding, visibly.
REMOVALS = {
    "jobs-create": (("batch", "jobs"), "create"),
    "status-patch": (("rlaif.dev", "rlaifjobs/status"), "patch"),
    "configmaps-create": (("", "configmaps"), "create"),
}


@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_one_rule_less_fails_visibly(cluster: Cluster, install: Install, removal):
    (group, resource), verb = REMOVALS[removal]
    plural = resource.split("/")[0]
    role_path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{install.jobs_ns}/roles/{install.deployment['metadata']['name']}"
    role = cluster.get(role_path)
    rules = []
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            assert rule["apiGroups"] == [group] and rule["resources"] == [resource], "split the rule first"
            assert verb in rule["verbs"]
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
            if not rule["verbs"]:
                continue
        rules.append(rule)
    assert len(rules) <= len(role["rules"]) and rules != role["rules"]
    cluster.request("PUT", role_path, {**role, "rules": rules})
    sub = resource.partition("/")[2]
    qualified = (f"{plural}.{group}" if group else plural) + (f"/{sub}" if sub else "")
    assert not can_i(cluster, install.kubeconfig, verb, qualified, install.jobs_ns)

    cmd, env, liveness, _ = operator_command(install.deployment)
    log = install.tmp / "operator.log"
    job = minimal_job(install.jobs_ns)
    with running_operator(cmd, env, install.kubeconfig, log) as proc:
        wait_healthy(liveness, proc, log)
        cluster.apply(job)
        path = f"/apis/rlaif.dev/v1alpha1/namespaces/{install.jobs_ns}/rlaifjobs/{job['metadata']['name']}"

        def forbidden_logged() -> bool:
            return bool(unexpected_forbidden(log.read_text(errors="replace")))

        cluster.wait_for(f"a 403 for {verb} {resource} in the operator log", forbidden_logged, timeout=90)
        got = cluster.get(path) or {}
        phase = (got.get("status") or {}).get("phase")
        assert phase != "Succeeded", f"the job succeeded without {verb} on {resource}"
    forbidden = unexpected_forbidden(log.read_text(errors="replace"))
    assert any(plural in line for line in forbidden), "\n".join(forbidden[-10:])
