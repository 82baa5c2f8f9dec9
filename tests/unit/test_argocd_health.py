"""The Argo CD health check (deploy/argocd/health.lua), run with a real Lua interpreter (lupa).

The cases live in deploy/argocd/health_test.yaml, in the layout Argo CD uses for its bundled checks
(resource_customizations/<group>/<kind>/health_test.yaml + testdata/), so the same files can be
contributed upstream. Argo CD runs the script with the resource as the global ``obj`` and takes the
returned table's ``status`` and ``message``; this harness does the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa")

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def assess(obj: dict[str, Any]) -> dict[str, Any]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_case(case):
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert assess(obj) == case["healthStatus"]


def test_cases_cover_every_health_status_the_script_returns():
    expected = {c["healthStatus"]["status"] for c in CASES}
    assert expected == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert expected <= ARGO_STATUSES
    fixtures = {p.name for p in (ARGOCD / "testdata").glob("*.yaml")}
    assert fixtures == {Path(c["inputPath"]).name for c in CASES}, (
        "every fixture needs a case, and vice versa"
    )


def test_fixtures_are_valid_rlaifjobs():
    """The fixtures' specs and statuses validate against the API models, so they stay realistic."""
    spec = pytest.importorskip("rlaif_api")
    for case in CASES:
        obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
        spec.RLAIFJobSpec.model_validate(obj["spec"])
        if "status" in obj:
            spec.RLAIFJobStatus.model_validate(obj["status"])


def test_observed_generation_gates_every_terminal_state():
    """Whatever the conditions say, a status older than the spec is Progressing."""
    base = yaml.safe_load((ARGOCD / "testdata" / "succeeded.yaml").read_text())
    for name in ("succeeded", "failed", "suspended"):
        obj = yaml.safe_load((ARGOCD / "testdata" / f"{name}.yaml").read_text())
        obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
        assert assess(obj)["status"] == "Progressing", name
    base["metadata"].pop("generation")  # no generation: nothing to compare, conditions decide
    assert assess(base)["status"] == "Healthy"


def test_failed_wins_over_succeeded():
    obj = yaml.safe_load((ARGOCD / "testdata" / "succeeded.yaml").read_text())
    for c in obj["status"]["conditions"]:
        if c["type"] == "Failed":
            c.update(status="True", reason="DeadlineExceeded", message="activeDeadlineSeconds 3600 exceeded")
    assert assess(obj) == {
        "status": "Degraded",
        "message": "DeadlineExceeded: activeDeadlineSeconds 3600 exceeded",
    }


def test_empty_status_object():
    obj = yaml.safe_load((ARGOCD / "testdata" / "new.yaml").read_text())
    obj["status"] = {}
    assert assess(obj)["status"] == "Progressing"
    obj["status"] = {"conditions": []}
    assert assess(obj)["status"] == "Progressing"


# ------------------------------------------------------------------------------------------------
# Flux: the healthCheckExprs in deploy/flux/kustomization.yaml, evaluated with cel-go against the
# same fixtures. Flux's outcomes map onto Argo CD's health like this:
# ------------------------------------------------------------------------------------------------
FLUX_OF_ARGO = {
    "Healthy": "Current",
    "Suspended": "Current",
    "Degraded": "Failed",
    "Progressing": "InProgress",
}


@pytest.fixture(scope="module")
def celcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go (deploy/flux/celcheck is built with cel-go)")
    out = tmp_path_factory.mktemp("celcheck") / "celcheck"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    proc = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=ROOT / "deploy" / "flux" / "celcheck",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_flux_health_check_exprs_agree_with_argocd(celcheck):
    inputs = [str(ARGOCD / c["inputPath"]) for c in CASES]
    proc = subprocess.run(
        [str(celcheck), str(ROOT / "deploy" / "flux" / "kustomization.yaml"), *inputs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    for case in CASES:
        name = Path(case["inputPath"]).name
        assert results[name]["status"] == FLUX_OF_ARGO[case["healthStatus"]["status"]], (name, results[name])
        if "error" in results[name]:  # only a job the operator has not seen yet may fail to evaluate
            assert "status" in results[name]["error"] and name == "new.yaml", results[name]


def test_celcheck_detects_a_wrong_expression(celcheck, tmp_path):
    """The checker is not a rubber stamp: an expression that ignores Failed misclassifies a failure."""
    text = (ROOT / "deploy" / "flux" / "kustomization.yaml").read_text()
    broken = text.replace("(c.type == 'Failed' && c.status == 'True') ||", "")
    assert broken != text
    (tmp_path / "k.yaml").write_text(broken)
    proc = subprocess.run(
        [str(celcheck), str(tmp_path / "k.yaml"), str(ARGOCD / "testdata" / "failed.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] != "Failed"


# ------------------------------------------------------------------------------------------------
# kstatus (sigs.k8s.io/cli-utils/pkg/kstatus, the real library through tests/cluster/go/kstatus)
# on the same fixtures. It reads the operator's Reconciling/Stalled conditions, then Ready; it has no
# notion of suspension (Ready=False: InProgress), and an object without any status is Current to it
# (a job the operator has not picked up yet, see docs/gitops.md).
# ------------------------------------------------------------------------------------------------
KSTATUS_OF_ARGO = {
    "Healthy": "Current",
    "Degraded": "Failed",
    "Progressing": "InProgress",
    "Suspended": "InProgress",
}


@pytest.fixture(scope="module")
def kstatus() -> Any:
    from tests.cluster import binaries, kstatus

    try:
        binaries.ensure(["kstatus"])
    except binaries.BinaryError as exc:
        if shutil.which("go") is None:
            pytest.skip(f"needs Go or a prebuilt kstatus: {exc}")
        raise
    return kstatus.verdicts


def test_kstatus_agrees_with_argocd_and_flux(kstatus):
    objs = [yaml.safe_load((ARGOCD / c["inputPath"]).read_text()) for c in CASES]
    verdicts = kstatus(objs)
    assert len(verdicts) == len(CASES)
    for case, verdict in zip(CASES, verdicts, strict=True):
        name = Path(case["inputPath"]).name
        if name == "new.yaml":  # no status at all: kstatus' one blind spot
            assert verdict["status"] == "Current", verdict
            continue
        assert verdict["status"] == KSTATUS_OF_ARGO[case["healthStatus"]["status"]], (name, verdict)
        if verdict["status"] != "Current":  # kstatus names the operator's reason, or the generation
            reasons = {c["reason"] for c in verdict["conditions"]}
            assert reasons, (name, verdict)


def test_kstatus_without_the_operators_pair_is_wrong(kstatus):
    """Why Reconciling/Stalled exist: without them kstatus reads a failed job as InProgress."""
    failed = yaml.safe_load((ARGOCD / "testdata" / "failed.yaml").read_text())
    failed["status"]["conditions"] = [
        c for c in failed["status"]["conditions"] if c["type"] not in ("Reconciling", "Stalled")
    ]
    assert kstatus([failed])[0]["status"] == "InProgress"


def test_fixture_conditions_are_what_the_operator_writes():
    """Each fixture's conditions are the operator's for its phase and reason (conditions_for), so the
    three checks are tested on objects the operator can produce, kstatus' pair included."""
    conditions = pytest.importorskip("rlaif_operator.conditions")
    for case in CASES:
        st = yaml.safe_load((ARGOCD / case["inputPath"]).read_text()).get("status") or {}
        if not st.get("conditions"):
            continue
        by_type = {c["type"]: c for c in st["conditions"]}
        phase = st["phase"]
        explained = by_type[phase] if phase in ("Failed", "Succeeded", "Suspended") else by_type["Running"]
        wanted = conditions.conditions_for(phase, explained["reason"], explained["message"])
        assert [c["type"] for c in st["conditions"]] == list(conditions.CONDITION_TYPES), case["inputPath"]
        for ctype, (true, reason, message) in wanted.items():
            got = by_type[ctype]
            assert (got["status"], got["reason"], got["message"]) == (
                "True" if true else "False",
                reason,
                message,
            ), (case["inputPath"], ctype)
