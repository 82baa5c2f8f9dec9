"""The Argo CD health check (deploy/argocd/health.lua), run with a real Lua interpreter (lupa).

The cases live in deploy/argocd/health_test.yaml, in the layout Argo CD uses for its bundled checks
(resource_customizations/<group>/<kind>/health_test.yaml + testdata/), so the same files can be
contributed upstream. Argo CD runs the script with the resource as the global ``obj`` and takes the
returned table's ``status`` and ``message``; this harness does the same.
"""

from __future__ import annotations

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
    spec = pytest.importorskip("rlaif_trainer.spec")
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
