"""The Helm chart, rendered with ``helm template`` and checked as YAML (no cluster needed).

helm-unittest is a plugin that cannot be installed here, so these tests render the chart with the
pinned helm binary (built by ``python -m tests.cluster build helm``) and assert on the objects.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlaif_operator.builders import METRICS_PORT_NAME
from rlaif_operator.settings import DEFAULT_TRAINER_METRICS_PORT
from tests.cluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rlaif-operator"
GENERATED_CRD = ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml"
CHART_CRD = CHART / "files" / "crds" / "rlaif.dev_rlaifjobs.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "rlaif-operator.json"
NAMESPACE = "rlaif-system"

# What the operator needs (see operator-guide.md for the reason of each), as (apiGroup, resource) ->
# verbs. Kept here as a literal so a change to the chart's rules is a deliberate, reviewed change.
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    ("rlaif.dev", "rlaifjobs"): {"list", "watch", "delete"},
    ("rlaif.dev", "rlaifjobs/status"): {"patch"},
    ("batch", "jobs"): {"list", "watch", "create", "delete"},
    ("jobset.x-k8s.io", "jobsets"): {"list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("apps", "deployments"): {"list", "watch", "create", "delete"},
    ("", "services"): {"create", "delete"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("", "persistentvolumeclaims"): {"list", "watch", "create"},
    ("", "events"): {"create"},
}


@pytest.fixture(scope="session")
def helm() -> Path:
    return binaries.ensure(["helm"])["helm"]


def render(
    helm: Path, *args: str, check: bool = True
) -> list[dict[str, Any]] | subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# ------------------------------------------------------------------------------------------------
# CRD: one source of truth
# ------------------------------------------------------------------------------------------------


def test_chart_crd_copy_matches_generated_crd():
    assert CHART_CRD.read_text() == GENERATED_CRD.read_text(), (
        f"{CHART_CRD.relative_to(ROOT)} drifted from the generated CRD; run: "
        f"cp {GENERATED_CRD.relative_to(ROOT)} {CHART_CRD.relative_to(ROOT)}"
    )


def test_rendered_crd_is_the_generated_crd_plus_labels(helm):
    docs = render(helm)
    crd = one(docs, "CustomResourceDefinition")
    generated = yaml.safe_load(GENERATED_CRD.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == "rlaifjobs.rlaif.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for key, value in generated["metadata"]["annotations"].items():
        assert crd["metadata"]["annotations"][key] == value
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crds_install_false_and_keep_false(helm):
    assert not by_kind(render(helm, "--set", "crds.install=false"), "CustomResourceDefinition")
    crd = one(render(helm, "--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]


# ------------------------------------------------------------------------------------------------
# The operator Deployment
# ------------------------------------------------------------------------------------------------


def check_restricted(pod_spec: dict[str, Any]) -> list[str]:
    """Violations of the Pod Security Standards "restricted" profile (v1.30+), checked statically.

    The integration tests also check this with the API server's own admission; this catches
    regressions without a cluster.
    """
    problems = []
    psc = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{flag} is set")
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']} uses {kinds - allowed_volumes}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) or sc.get("runAsNonRoot") is False:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems


def test_restricted_checker_catches_violations():
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    problems = check_restricted(bad)
    assert any("hostNetwork" in p for p in problems)
    assert any("hostPath" in p for p in problems)
    assert any("privileged" in p for p in problems)
    assert any("runAsNonRoot" in p for p in problems)
    assert any("seccomp" in p for p in problems)


def test_deployment_defaults(helm):
    docs = render(helm)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert check_restricted(pod) == []
    c = container(deployment)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the Dockerfile's USER
    assert c["image"] == "ghcr.io/rlaif-dev/rlaif-operator:0.1.0"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    args = c["args"]
    assert "--all-namespaces" in args
    assert not any(a.startswith("--namespace") for a in args)
    assert "--metrics-port=8080" in args and "--liveness-port=8081" in args
    assert "--log-format=json" in args
    assert "--trainer-image=ghcr.io/rlaif-dev/rlaif-trainer:0.1.0" in args
    assert "--gpu-resource-name=nvidia.com/gpu" in args
    assert "--trainer-service-account=rlaif-trainer" in args
    assert f"--trainer-metrics-port={DEFAULT_TRAINER_METRICS_PORT}" in args
    assert not any(a.startswith("--default-queue-name") for a in args)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RLAIF_LOG_LEVEL"] == "info"
    assert json.loads(env["RLAIF_TRAINER_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (
        pod["serviceAccountName"]
        == one(by_kind(docs, "ServiceAccount")[:1], "ServiceAccount")["metadata"]["name"]
    )
    assert "priorityClassName" not in pod


def test_deployment_non_default_values(helm):
    docs = render(
        helm,
        "--set", "image.digest=sha256:" + "a" * 64,
        "--set", "trainer.image.tag=1.2.3",
        "--set", "trainer.gpuResourceName=amd.com/gpu",
        "--set", "kueue.defaultQueueName=team-gpu",
        "--set", "log.level=debug",
        "--set", "log.format=plain",
        "--set", "priorityClassName=platform-critical",
        "--set", "metrics.port=9090",
        "--set", "health.port=9091",
        "--set", "trainer.metricsPort=0",
    )  # fmt: skip
    deployment = one(docs, "Deployment")
    c = container(deployment)
    assert c["image"] == "ghcr.io/rlaif-dev/rlaif-operator@sha256:" + "a" * 64
    assert "--trainer-image=ghcr.io/rlaif-dev/rlaif-trainer:1.2.3" in c["args"]
    assert "--gpu-resource-name=amd.com/gpu" in c["args"]
    assert "--default-queue-name=team-gpu" in c["args"]
    assert "--log-format=plain" in c["args"]
    assert "--metrics-port=9090" in c["args"] and "--liveness-port=9091" in c["args"]
    assert "--trainer-metrics-port=0" in c["args"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RLAIF_LOG_LEVEL"] == "debug"
    assert deployment["spec"]["template"]["spec"]["priorityClassName"] == "platform-critical"
    service = one(docs, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "metrics": "metrics",
        "health": "health",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "image.tag=latest",
        "replicaCount=2",
        "log.format=xml",
        "log.level=verbose",
        "watchNamespaces[0]=Not_A_Namespace",
        "trainer.serviceAccount.name=",
        "unknownKey=1",
        "image.digest=md5:abc",
        "trainer.metricsPort=70000",
    ],
)
def test_values_schema_rejects(helm, bad):
    proc = render(helm, "--set", bad, check=False)
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert (
        "values don't meet the specifications of the schema" in proc.stderr or "schema" in proc.stderr.lower()
    ), proc.stderr


# ------------------------------------------------------------------------------------------------
# RBAC
# ------------------------------------------------------------------------------------------------


def assert_no_wildcards(docs: list[dict[str, Any]]) -> None:
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (
                    f"{role['kind']} {role['metadata']['name']}: wildcard in {key}"
                )
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule or rule["resourceNames"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_cluster_mode_rbac(helm):
    docs = render(helm)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    assert rules_of(role) == EXPECTED_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa_name = (
        container(one(docs, "Deployment"))
        and one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    )
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    assert_no_wildcards(docs)


def test_namespaced_mode_rbac(helm):
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == EXPECTED_RULES
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == NAMESPACE
    args = container(one(docs, "Deployment"))["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    assert_no_wildcards(docs)


def test_rbac_create_false(helm):
    docs = render(helm, "--set", "rbac.create=false")
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not by_kind(docs, kind)


def test_trainer_service_account(helm):
    sas = [s for s in by_kind(render(helm), "ServiceAccount") if s["metadata"]["name"] == "rlaif-trainer"]
    assert [s["metadata"]["namespace"] for s in sas] == [NAMESPACE]
    assert sas[0]["automountServiceAccountToken"] is False
    docs = render(
        helm,
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "trainer.serviceAccount.extraNamespaces={team-c,team-a}",
    )
    sas = [s for s in by_kind(docs, "ServiceAccount") if s["metadata"]["name"] == "rlaif-trainer"]
    assert sorted(s["metadata"]["namespace"] for s in sas) == ["team-a", "team-b", "team-c"]
    # No role is bound to the trainer's identity.
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert all(s["name"] != "rlaif-trainer" for s in binding["subjects"])


def test_optional_rbac_rules(helm):
    docs = render(helm, "--set", "rbac.ownerReferencesPermissionEnforcement=true")
    role = next(r for r in by_kind(docs, "ClusterRole"))
    assert rules_of(role) == {**EXPECTED_RULES, ("rlaif.dev", "rlaifjobs/finalizers"): {"update"}}
    docs = render(helm, "--set", "rbac.watchCRDs=true", "--set", "watchNamespaces={team-a}")
    (crd_role,) = by_kind(docs, "ClusterRole")
    assert rules_of(crd_role) == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    from rlaif_operator import rbac

    assert crd_role["rules"] == rbac.CLUSTER_DISCOVERY_RULES
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == crd_role["metadata"]["name"]
    assert_no_wildcards(docs)


def test_leader_election_off_by_default_and_more_than_one_replica_refused(helm):
    docs = render(helm)
    assert not [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert not any(a.startswith("--leader-election") for a in container(one(docs, "Deployment"))["args"])
    for values in (["--set", "replicaCount=2"], ["--set", "replicaCount=2,leaderElection.enabled=false"]):
        proc = render(helm, *values, check=False)
        assert proc.returncode != 0 and "replicaCount" in proc.stderr, proc.stderr


def test_leader_election_replicas_rbac_and_args(helm):
    """Two replicas with a Lease: a Role for that one Lease in the release namespace only (the same
    rules rlaif_operator.rbac declares), the operator flags, spread over nodes."""
    from rlaif_operator import rbac

    docs = render(
        helm, "--set", "replicaCount=2,leaderElection.enabled=true", "--set", "watchNamespaces={team-a}"
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # Recreate still: a rolling update could overlap an old pod that takes no Lease with a new leader.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(deployment)
    lease = "rel-rlaif-operator"
    assert f"--leader-election={lease}" in c["args"]
    assert {"--lease-duration=15", "--renew-deadline=10", "--retry-period=2"} <= set(c["args"])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    # kopf's identity and the Lease holder come from the pod name; the Lease's namespace from the pod's.
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    (le_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert le_role["metadata"]["namespace"] == NAMESPACE
    assert le_role["rules"] == rbac.leader_election_rules(lease)
    (le_binding,) = [
        b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("leader-election")
    ]
    assert le_binding["metadata"]["namespace"] == NAMESPACE
    assert le_binding["roleRef"]["name"] == le_role["metadata"]["name"]
    assert le_binding["subjects"][0]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    # The watched namespace's Role is unchanged: no lease access outside the release namespace.
    (team_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "team-a"]
    assert rules_of(team_role) == EXPECTED_RULES
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    assert_no_wildcards(docs)
    # Own names and timings (floats need --set-json: --set turns 4.5 into a string).
    docs = render(
        helm,
        "--set-json",
        'leaderElection={"enabled":true,"leaseName":"ops","leaseDuration":4.5,"renewDeadline":3,"retryPeriod":0.5}',
    )
    args = container(one(docs, "Deployment"))["args"]
    assert {
        "--leader-election=ops",
        "--lease-duration=4.5",
        "--renew-deadline=3",
        "--retry-period=0.5",
    } <= set(args)
    (le_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert le_role["rules"][1]["resourceNames"] == ["ops"]


@pytest.mark.parametrize(
    "timing",
    [
        '{"enabled":true,"renewDeadline":20}',
        '{"enabled":true,"retryPeriod":10}',
        '{"enabled":true,"leaseDuration":0}',
        '{"enabled":true,"leaseName":"Not_A_Name"}',
    ],
)
def test_leader_election_refuses_bad_timing(helm, timing):
    proc = render(helm, "--set-json", f"leaderElection={timing}", check=False)
    assert proc.returncode != 0, f"{timing} was accepted"


def test_rules_mirror_the_operators_declared_needs():
    """The chart grants exactly what the operator declares it needs (no more, no less)."""
    from rlaif_operator import rbac

    declared: dict[tuple[str, str], set[str]] = {}
    for rule in rbac.RBAC_RULES:
        groups = rule.get("apiGroups") or rule.get("api_groups")
        for group in groups:
            for resource in rule["resources"]:
                declared.setdefault((group, resource), set()).update(rule["verbs"])
    assert declared == EXPECTED_RULES


# ------------------------------------------------------------------------------------------------
# Monitoring
# ------------------------------------------------------------------------------------------------


def test_monitoring_off_by_default(helm):
    docs = render(helm)
    for kind in ("ServiceMonitor", "PodMonitor", "ConfigMap"):
        assert not by_kind(docs, kind)


def test_monitoring_on(helm):
    docs = render(
        helm,
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=kps",
        "--set", "trainer.podMonitor.enabled=true",
        "--set", "grafana.dashboard.enabled=true",
        "--set", "grafana.dashboard.namespace=monitoring",
    )  # fmt: skip
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The Service selects the operator pod.
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    pod_monitor = one(docs, "PodMonitor")
    exprs = {e["key"]: e["operator"] for e in pod_monitor["spec"]["selector"]["matchExpressions"]}
    assert exprs == {"rlaif.dev/job": "Exists", "rlaif.dev/stage": "Exists"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert (
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == METRICS_PORT_NAME
    )  # what the operator declares

    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["rlaif-operator.json"]) == json.loads(DASHBOARD.read_text())

    namespaced = render(helm, "--set", "trainer.podMonitor.enabled=true", "--set", "watchNamespaces={team-a}")
    assert one(namespaced, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_service_monitor_needs_the_service(helm):
    proc = render(
        helm,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
        check=False,
    )
    assert proc.returncode != 0 and "metrics.service.enabled" in proc.stderr


def test_dashboard_covers_the_operator_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for family in (
        "rlaif_jobs",
        "rlaif_stage_duration_seconds_bucket",
        "rlaif_stage_attempts_total",
        "rlaif_reconcile_total",
        "rlaif_reconcile_duration_seconds_bucket",
        "rlaif_api_requests_total",
        "rlaif_trainer_samples_per_second",
    ):
        assert family in exprs, f"no panel uses {family}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']} hard-codes a datasource"
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"panel {p['title']} is off the grid"
    # No per-job labels on operator metrics: dashboards must not group them by job name.
    operator_exprs = [t["expr"] for p in panels for t in p["targets"] if "rlaif_trainer_" not in t["expr"]]
    assert not any("rlaif_dev_job" in e for e in operator_exprs)


def test_helm_test_hook(helm):
    docs = render(helm)
    (pod,) = [
        d for d in by_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert check_restricted(pod["spec"]) == []
    assert pod["spec"]["restartPolicy"] == "Never"
    script = pod["spec"]["containers"][0]["args"][0]
    compile(script, "helm-test", "exec")  # the embedded check is valid Python
    assert "rel-rlaif-operator-metrics.rlaif-system.svc" in script
    assert not [d for d in by_kind(render(helm, "--set", "tests.enabled=false"), "Pod")]


def test_helm_lint(helm):
    for args in (
        [],
        [
            "--set",
            "watchNamespaces={a,b}",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "crds.install=false",
        ],
    ):
        proc = subprocess.run(
            [str(helm), "lint", "--strict", str(CHART), *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
