"""The CRD is generated from the pydantic models; these tests keep the committed copy honest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import rlaif_api as api
from rlaif_api import crd

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "crds" / crd.CRD_FILENAME


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return crd.openapi_schema()


def test_committed_crd_matches_generator():
    assert COMMITTED.read_text() == crd.render(), "crds/ is stale: run `make crds` and commit the result"


def test_check_flag_detects_drift(tmp_path: Path):
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("Rank of the adapter", "Rank of adapter"))
    assert crd.main(["-o", str(stale), "--check"]) == 1
    stale.write_text(crd.render())
    assert crd.main(["-o", str(stale), "--check"]) == 0


def test_every_field_has_a_description(schema):
    # Array items and map values are described by the field that holds them.
    missing = [
        path
        for path, node in _walk(schema)
        if path not in ("", ".metadata") and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural(schema):
    """No $ref, no non-int-or-string anyOf, and a type on every node (Kubernetes' structural rules)."""
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_quantities_are_int_or_string_with_the_quantity_pattern(schema):
    memory = schema["properties"]["spec"]["properties"]["resources"]["properties"]["default"]["properties"][
        "memory"
    ]
    assert memory["x-kubernetes-int-or-string"] is True
    assert memory["pattern"] == api.QUANTITY_PATTERN


def test_paper_defaults_are_served_by_the_api_server(schema):
    rl = schema["properties"]["spec"]["properties"]["rl"]["properties"]
    assert rl["klCoef"]["default"] == 0.05
    assert rl["temperature"]["default"] == 0.9
    labeler = schema["properties"]["spec"]["properties"]["labeler"]["properties"]
    assert labeler["positionDebias"]["default"] is True
    assert schema["properties"]["spec"]["properties"]["rl"]["default"]["klCoef"] == 0.05


def test_cel_rules_are_attached_where_declared(schema):
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert [r["message"] for r in spec_rules] == [r.message for r in api.RLAIFJobSpec.cel_rules]
    labeler_rules = schema["properties"]["spec"]["properties"]["labeler"]["x-kubernetes-validations"]
    assert any("endpoint" in r["rule"] for r in labeler_rules)
    judge = schema["properties"]["spec"]["properties"]["evaluation"]["properties"]["judge"]
    assert judge["x-kubernetes-validations"] == labeler_rules
    assert schema["x-kubernetes-validations"][0]["rule"].startswith("!has(oldSelf.status)")


def test_crd_surface():
    document = yaml.safe_load(COMMITTED.read_text())
    names = document["spec"]["names"]
    assert names["shortNames"] == ["rlaif"] and "rlaif" in names["categories"]
    version = document["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Phase",
        "Stage",
        "Progress",
        "Stage-%",
        "Win-Rate",
        "Age",
        "Reason",
        "Attempt",
        "Queue",
        "Message",
    ]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority") == 1]
    assert wide == ["Reason", "Attempt", "Queue", "Message"]  # only with -o wide


def test_generator_refuses_a_field_without_description():
    node = {"type": "object", "properties": {"x": {"type": "string"}}, "description": "d"}
    with pytest.raises(crd.SchemaError, match=r"\.x has no description"):
        crd._require_descriptions(node, "")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        crd.main(["--help"])
    assert exit_info.value.code == 0
    assert "--check" in capsys.readouterr().out
