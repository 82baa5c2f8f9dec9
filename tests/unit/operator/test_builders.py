"""Manifest builders: names, labels, ownership, GPUs, security context, Kueue, secrets, accelerate."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from rlaif_api import RLAIFJob, StageConfig
from rlaif_operator import builders as b
from tests.unit.operator.sim import SPEC, UID

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SETTINGS = b.Settings(trainer_image="trainer:1", trainer_service_account="rlaif-trainer")


def job(name: str = "demo", **spec_updates: Any) -> tuple[RLAIFJob, b.Owner]:
    spec = copy.deepcopy(SPEC)
    spec.update(spec_updates)
    model = RLAIFJob.model_validate({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})
    return model, b.Owner(name=name, namespace="ns", uid=UID)


def stage_job(
    stage: str = "label", attempt: int = 1, settings: b.Settings = SETTINGS, **spec_updates: Any
) -> dict[str, Any]:
    model, owner = job(**spec_updates)
    return b.build_stage_job(model, owner, stage, attempt, settings, "trainer:1")


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(manifest)["containers"][0]


# -- names ---------------------------------------------------------------------------------------


def test_stage_job_name_is_deterministic() -> None:
    assert b.stage_job_name("demo", "label", 1) == "demo-label-1"
    assert b.stage_job_name("demo", "evaluate", 12) == "demo-evaluate-12"


@pytest.mark.parametrize("length", [50, 55, 60, 63, 100, 253])
def test_long_names_are_truncated_with_a_hash(length: int) -> None:
    name = ("a" * (length - 1)) + "z"
    out = b.stage_job_name(name, "evaluate", 3)
    assert len(out) <= 63
    assert DNS_LABEL.match(out)
    assert out.endswith("-evaluate-3")
    # deterministic, and distinct names stay distinct after truncation
    assert out == b.stage_job_name(name, "evaluate", 3)
    assert out != b.stage_job_name(("a" * (length - 1)) + "y", "evaluate", 3)


def test_truncation_never_leaves_a_dash_before_the_hash() -> None:
    name = "x" * 40 + "-" * 5 + "y" * 30
    out = b.stage_job_name(name, "reward", 1)
    assert "--" not in out and DNS_LABEL.match(out) and len(out) <= 63


def test_dotted_names_become_dns_labels() -> None:
    assert DNS_LABEL.match(b.stage_job_name("my.job.v2", "rl", 1))


def test_label_value_of_a_long_job_name_fits() -> None:
    value = b.job_label_value("j" * 200)
    assert len(value) <= 63
    assert b.job_label_value("short") == "short"


# -- stage Job -----------------------------------------------------------------------------------


def test_stage_job_labels_owner_and_policy() -> None:
    m = stage_job("reward", 2)
    meta = m["metadata"]
    assert meta["name"] == "demo-reward-2" and meta["namespace"] == "ns"
    assert meta["labels"][b.LABEL_JOB] == "demo"
    assert meta["labels"][b.LABEL_STAGE] == "reward"
    assert meta["labels"][b.LABEL_ATTEMPT] == "2"
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "rlaif.dev/v1alpha1",
        "kind": "RLAIFJob",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert m["spec"]["backoffLimit"] == 0
    assert "suspend" not in m["spec"]
    pod_labels = m["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[b.LABEL_STAGE] == "reward" and pod_labels[b.LABEL_JOB] == "demo"
    ps = pod_spec(m)
    assert ps["restartPolicy"] == "Never"
    assert ps["serviceAccountName"] == "rlaif-trainer"
    assert ps["automountServiceAccountToken"] is False


def test_restricted_security_context() -> None:
    m = stage_job()
    psc = pod_spec(m)["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(m)["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["runAsNonRoot"] is True
    assert "privileged" not in csc


def test_gpu_requests_equal_limits_and_resource_name_is_configurable() -> None:
    m = stage_job(resources={"default": {"gpus": 1, "cpu": "4", "memory": "16Gi"}})
    res = container(m)["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    amd = stage_job(settings=b.Settings(gpu_resource_name="amd.com/gpu"))
    assert container(amd)["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_zero_gpus_requests_no_gpu() -> None:
    m = stage_job(resources={"default": {"gpus": 0}})
    assert "resources" not in container(m)


def test_single_gpu_runs_rlaif_train_directly() -> None:
    cmd = container(stage_job("rl"))["command"]
    assert cmd[:4] == ["rlaif-train", "rl", "--config", "/etc/rlaif/rl.json"]
    assert "--termination-log" in cmd


def test_multi_gpu_runs_under_accelerate_launch_with_shm() -> None:
    m = stage_job("rl", resources={"default": {"gpus": 1}, "rl": {"gpus": 4}})
    cmd = container(m)["command"]
    assert cmd[:7] == [
        "accelerate",
        "launch",
        "--num_processes",
        "4",
        "--multi_gpu",
        "-m",
        "rlaif_trainer.cli",
    ]
    assert cmd[7:10] == ["rl", "--config", "/etc/rlaif/rl.json"]
    assert container(m)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    mounts = {v["mountPath"] for v in container(m)["volumeMounts"]}
    assert "/dev/shm" in mounts
    # other stages keep the default single GPU
    assert (
        container(stage_job("label", resources={"default": {"gpus": 1}, "rl": {"gpus": 4}}))["command"][0]
        == "rlaif-train"
    )


@pytest.mark.parametrize("gpus", [1, 4])
def test_trainer_serves_metrics_on_the_port_the_pod_monitor_scrapes(gpus: int) -> None:
    from tests.unit.test_chart import check_restricted

    m = stage_job("rl", resources={"default": {"gpus": gpus}})
    c = container(m)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    cmd = c["command"]
    i = cmd.index("--metrics-port")
    assert cmd[i + 1] == "9400"
    assert cmd.index("rl") < i, "--metrics-port is an option of the stage subcommand"
    assert check_restricted(pod_spec(m)) == []
    moved = container(stage_job("rl", settings=b.Settings(trainer_metrics_port=9123)))
    assert moved["ports"][0]["containerPort"] == 9123
    assert moved["command"][moved["command"].index("--metrics-port") + 1] == "9123"


def test_trainer_metrics_port_zero_declares_no_port() -> None:
    c = container(stage_job(settings=b.Settings(trainer_metrics_port=0)))
    assert "ports" not in c and "--metrics-port" not in c["command"]


def test_stage_command_parses_with_the_trainer_cli() -> None:
    from rlaif_trainer.cli import build_parser

    for gpus in (1, 4):
        cmd = b.stage_command("reward", gpus, 9400)
        argv = cmd[cmd.index("reward") :]
        args = build_parser().parse_args(argv)
        assert args.command == "reward" and args.metrics_port == 9400 and args.no_progress


def test_termination_message_policy() -> None:
    c = container(stage_job())
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == "/dev/termination-log"


def test_kueue_label_and_suspended_creation() -> None:
    m = stage_job(runPolicy={"queueName": "team-a", "priorityClassName": "high"})
    assert m["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "team-a"
    assert m["spec"]["suspend"] is True
    assert pod_spec(m)["priorityClassName"] == "high"


def test_default_queue_name_from_settings() -> None:
    m = stage_job(settings=b.Settings(default_queue_name="default-q"))
    assert m["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "default-q"
    assert m["spec"]["suspend"] is True
    assert b.KUEUE_QUEUE_LABEL not in stage_job()["metadata"]["labels"]


def test_api_key_comes_from_a_secret_ref_and_is_never_inlined() -> None:
    labeler = {
        "provider": "openai",
        "model": "m",
        "endpoint": "http://vllm:8000/v1",
        "apiKeySecretRef": {"name": "llm-key", "key": "token"},
    }
    m = stage_job(labeler=labeler)
    env = {e["name"]: e for e in container(m)["env"]}
    assert env[b.API_KEY_ENV] == {
        "name": b.API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "token"}},
    }
    assert "value" not in env[b.API_KEY_ENV]
    # the configs carry only the reference, and the pod spec has no literal value anywhere
    assert all("value" not in e for e in container(m)["env"] if e["name"].endswith("API_KEY"))
    assert '"valueFrom"' not in json.dumps(b.build_configmap(*job(labeler=labeler), SETTINGS)["data"])


def test_workspace_and_config_mounts() -> None:
    m = stage_job(storage={"persistentVolumeClaim": {"claimName": "shared"}, "subPath": "team"})
    mounts = {v["name"]: v for v in container(m)["volumeMounts"]}
    assert mounts[b.WORKSPACE_VOLUME]["mountPath"] == "/workspace"
    assert mounts[b.WORKSPACE_VOLUME]["subPath"] == "team"
    assert mounts[b.CONFIG_VOLUME]["mountPath"] == "/etc/rlaif"
    volumes = {v["name"]: v for v in pod_spec(m)["volumes"]}
    assert volumes[b.WORKSPACE_VOLUME]["persistentVolumeClaim"]["claimName"] == "shared"
    assert volumes[b.CONFIG_VOLUME]["configMap"]["name"] == "demo-config"
    default = {v["name"]: v for v in pod_spec(stage_job())["volumes"]}
    assert default[b.WORKSPACE_VOLUME]["persistentVolumeClaim"]["claimName"] == "demo-workspace"


def test_pod_template_overrides_apply_but_operator_fields_win() -> None:
    tpl = {
        "labels": {"team": "a", b.LABEL_STAGE: "hijack"},
        "annotations": {"rlaif.dev/test-exit-code": "1"},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "serviceAccountName": "custom-sa",
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "FOO", "value": "1"}, {"name": "RLAIF_STAGE", "value": "evil"}],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": b.WORKSPACE_VOLUME, "emptyDir": {}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    m = stage_job(podTemplate=tpl)
    meta = m["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "a" and meta["labels"][b.LABEL_STAGE] == "label"
    assert meta["annotations"]["rlaif.dev/test-exit-code"] == "1"
    ps = pod_spec(m)
    assert ps["nodeSelector"] == {"gpu": "h100"}
    assert ps["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert ps["affinity"] == {"nodeAffinity": {}}
    assert ps["serviceAccountName"] == "custom-sa"
    assert ps["imagePullSecrets"] == [{"name": "regcred"}]
    env = [e for e in container(m)["env"] if e["name"] == "RLAIF_STAGE"]
    assert env == [{"name": "RLAIF_STAGE", "value": "label"}]
    assert {"name": "FOO", "value": "1"} in container(m)["env"]
    names = [v["name"] for v in ps["volumes"]]
    assert names.count(b.WORKSPACE_VOLUME) == 1 and "data" in names
    assert {"name": "data", "mountPath": "/data"} in container(m)["volumeMounts"]


def test_default_tolerations_from_settings_are_added() -> None:
    tol = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    m = stage_job(settings=b.Settings(default_tolerations=tol))
    assert pod_spec(m)["tolerations"] == list(tol)


# -- ConfigMap and PVC ---------------------------------------------------------------------------


def test_configmap_holds_one_resolved_config_per_stage() -> None:
    model, owner = job(stages=["reward", "rl"], dataset={"prompts": "data/p.jsonl", "labels": "l.jsonl"})
    cm = b.build_configmap(model, owner, SETTINGS)
    assert cm["metadata"]["name"] == "demo-config"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    assert sorted(cm["data"]) == ["reward.json", "rl.json"]
    cfg = StageConfig.model_validate_json(cm["data"]["rl.json"])
    assert cfg.stage == "rl"
    assert cfg.spec.dataset.prompts == "/workspace/data/p.jsonl"
    assert cfg.artifacts.policy == "/workspace/ns/demo/policy"


def test_configmap_does_not_change_when_only_suspend_or_ttl_change() -> None:
    a = b.build_configmap(*job(), SETTINGS)
    c = b.build_configmap(*job(runPolicy={"suspend": True, "ttlSecondsAfterFinished": 5}), SETTINGS)
    assert a["data"] == c["data"]


def test_pvc_only_when_storage_asks_for_one() -> None:
    model, owner = job()
    pvc = b.build_pvc(model, owner)
    assert pvc is not None and pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    model, owner = job(storage={"size": "100Gi", "storageClassName": "fast"})
    pvc = b.build_pvc(model, owner)
    assert pvc is not None
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["metadata"]["ownerReferences"][0]["controller"] is True
    model, owner = job(storage={"persistentVolumeClaim": {"claimName": "x"}})
    assert b.build_pvc(model, owner) is None


# -- metrics -------------------------------------------------------------------------------------


def test_metric_families_names_and_no_per_job_labels() -> None:
    from prometheus_client import generate_latest

    from rlaif_operator.metrics import PHASES, Metrics

    m = Metrics()
    m.set_phase("uid-a", "Labeling")
    m.set_phase("uid-b", "Labeling")
    m.set_phase("uid-c", "Succeeded")
    m.stage_finished("label", "succeeded", 12.0)
    m.stage_finished("label", "failed", None)
    m.reconcile_total.labels(result="success").inc()
    m.reconcile_duration.observe(0.01)
    m.api_request("POST", 201, 0.01)
    text = generate_latest(m.registry).decode()
    assert 'rlaif_jobs{phase="Labeling"} 2.0' in text
    assert 'rlaif_jobs{phase="Succeeded"} 1.0' in text
    assert all(f'rlaif_jobs{{phase="{p}"}}' in text for p in PHASES)
    assert 'rlaif_stage_attempts_total{result="succeeded",stage="label"} 1.0' in text
    assert 'rlaif_stage_attempts_total{result="failed",stage="label"} 1.0' in text
    assert 'rlaif_stage_duration_seconds_count{result="succeeded",stage="label"} 1.0' in text
    assert 'rlaif_reconcile_total{result="success"} 1.0' in text
    assert "rlaif_reconcile_duration_seconds_bucket" in text
    assert "uid-" not in text
    m.forget("uid-c")
    assert 'rlaif_jobs{phase="Succeeded"} 0.0' in generate_latest(m.registry).decode()


def test_cli_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from rlaif_operator.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in (
        "--namespace",
        "--all-namespaces",
        "--metrics-port",
        "--liveness-port",
        "--log-format",
        "--trainer-image",
        "--gpu-resource-name",
        "--trainer-service-account",
        "--default-queue-name",
        "--trainer-metrics-port",
    ):
        assert flag in out
    args = build_parser().parse_args(["-n", "a", "-n", "b", "--log-format", "json"])
    assert args.namespace == ["a", "b"] and args.log_format == "json"
    assert args.trainer_metrics_port == b.Settings().trainer_metrics_port == 9400
    assert build_parser().parse_args(["-A", "--trainer-metrics-port", "0"]).trainer_metrics_port == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-A", "--trainer-metrics-port", "70000"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--namespace", "a", "--all-namespaces"])


def test_rbac_rules_cover_what_the_operator_calls() -> None:
    from rlaif_operator.rbac import RBAC_RULES

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RBAC_RULES
        )

    for group, resource, verb in [
        ("rlaif.dev", "rlaifjobs", "watch"),
        ("rlaif.dev", "rlaifjobs", "delete"),
        ("rlaif.dev", "rlaifjobs/status", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("", "pods", "watch"),
        ("", "configmaps", "create"),
        ("", "persistentvolumeclaims", "create"),
        ("", "events", "create"),
    ]:
        assert allowed(group, resource, verb), (group, resource, verb)
    assert not allowed("", "secrets", "get")  # API keys reach pods by reference only
    assert not allowed("", "pods", "create") and not allowed("rlaif.dev", "rlaifjobs", "update")
