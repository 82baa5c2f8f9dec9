"""The docs stay true: the generated reference is current, links resolve, and the operator guide's
RBAC and metrics tables list exactly what the chart grants and the operator exports."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CRD = ROOT / "crds" / "rlaif.dev_rlaifjobs.yaml"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_current():
    gen = _load_generator()
    expected = gen.render(yaml.safe_load(CRD.read_text()))
    assert (DOCS / "reference.md").read_text() == expected, (
        "docs/reference.md is stale: run `python docs/gen_reference.py`"
    )
    assert gen.main(["--check"]) == 0


def test_reference_check_detects_drift(tmp_path):
    gen = _load_generator()
    stale = tmp_path / "reference.md"
    stale.write_text((DOCS / "reference.md").read_text().replace("Rank of the adapter matrices", "Rank"))
    assert gen.main(["--check", "--output", str(stale)]) == 1


def _paths(node: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, sub in node.get("properties", {}).items():
        out.append((f"{prefix}.{name}", sub))
        item = sub.get("items", {}) if sub.get("type") == "array" else sub
        out.extend(_paths(item, f"{prefix}.{name}" + ("[]" if sub.get("type") == "array" else "")))
    return out


def test_reference_documents_every_field_with_its_description():
    text = (DOCS / "reference.md").read_text()
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sections = dict(re.findall(r"^### `([^`]+)`\n(.*?)(?=^### |\Z)", text, re.M | re.S))
    fields = _paths(schema["properties"]["spec"], "spec") + _paths(schema["properties"]["status"], "status")
    assert len(fields) > 100
    for path, sub in fields:
        parent, name = path.rsplit(".", 1)
        assert parent in sections, f"no section for {parent}"
        row = re.search(rf"^\| \[?`{re.escape(name)}`.*$", sections[parent], re.M)
        assert row, f"{path} is missing from docs/reference.md"
        first_words = " ".join(sub["description"].split()[:4]).replace("|", "\\|")
        assert first_words in row.group(0), f"{path}: description not in its row"


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = heading.strip().lower()
        slug = re.sub(r"[^\w\- ]", "", slug).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_resolve(doc):
    text = (DOCS / doc).read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        path = (DOCS / file_part).resolve() if file_part else DOCS / doc
        assert path.exists(), f"{doc}: link to missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path.read_text()), f"{doc}: no heading for #{anchor} in {path.name}"


def _chart_rules() -> list[dict[str, Any]]:
    helpers = (ROOT / "charts" / "rlaif-operator" / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "rlaif-operator.rules" -}}\n(.*?)\n{{- if', helpers, re.S)
    assert block, "rules block not found in _helpers.tpl"
    return yaml.safe_load(block.group(1))


def test_operator_guide_explains_every_rbac_rule():
    guide = (DOCS / "operator-guide.md").read_text()
    rows = re.findall(r"^\| `([^`]*)` \| `([^`]+)` \| ([a-z, ]+) \| (.+) \|$", guide, re.M)
    documented: dict[tuple[str, str], set[str]] = {}
    for group, resource, verbs, why in rows:
        assert len(why.strip()) > 20, f"{group}/{resource}: give a reason"
        documented.setdefault(("" if group == '""' else group, resource), set()).update(
            v.strip() for v in verbs.split(",")
        )
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in _chart_rules():
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == documented


def test_operator_guide_lists_every_metric():
    pytest.importorskip("prometheus_client")
    from rlaif_operator.metrics import Metrics

    families = {m.name for m in Metrics().registry.collect()}
    assert {"rlaif_jobs", "rlaif_stage_duration_seconds", "rlaif_reconcile"} <= families
    guide = (DOCS / "operator-guide.md").read_text()
    section = guide[guide.index("## Metrics reference") : guide.index("## Dashboards and alerts")]
    listed = set(re.findall(r"^\| `(rlaif_[a-z_]+)` \|", section, re.M))
    # prometheus-client reports counters without their _total suffix.
    assert {name.removesuffix("_total") for name in listed} == families
