"""Generate the RLAIFJob CustomResourceDefinition from the pydantic models in :mod:`rlaif_api`.

The models are the one source of truth; ``crds/rlaif.dev_rlaifjobs.yaml`` is this module's output and
a unit test fails when the committed copy drifts. Run ``python -m rlaif_api.crd --help``.

pydantic's JSON Schema is close to, but not, a Kubernetes *structural* schema, so this module:
inlines ``$ref``s, turns ``Optional[X]`` (``anyOf: [X, null]``) into plain ``X``, drops ``title``,
and attaches the :class:`~rlaif_api.types.CelRule` s declared on each model as
``x-kubernetes-validations``. Defaults are kept, so the API server fills them in and CEL rules can
rely on them (``self.rl.reward`` exists even when a user leaves ``rl`` out). An object's default is
written in full: the API server checks a default against the CEL rules as it is written, before
nested defaulting, so ``rl: {}`` would fail a rule that reads ``self.algorithm``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

import rlaif_api as api

CRD_FILENAME = f"{api.GROUP}_{api.PLURAL}.yaml"
_DROPPED_KEYS = {"title", "$defs", "examples"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema (e.g. a field lacks a description)."""


def _models_by_title() -> dict[str, type[api.ApiModel]]:
    found: dict[str, type[api.ApiModel]] = {}
    for value in vars(api).values():
        if isinstance(value, type) and issubclass(value, api.ApiModel) and value is not api.ApiModel:
            found[value.__name__] = value
    return found


def _strip_null(options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in options if o.get("type") != "null"]


def _structural(
    node: dict[str, Any], defs: dict[str, Any], models: dict[str, type[api.ApiModel]], path: str
) -> dict[str, Any]:
    """Rewrite one pydantic JSON Schema node into a Kubernetes structural schema node."""
    description = node.get("description")
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = _structural(defs[name], defs, models, path)
        model = models.get(name)
        if model is not None and model.cel_rules:
            target["x-kubernetes-validations"] = [r.to_schema() for r in model.cel_rules]
        if description:
            target["description"] = description
        return target
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = _strip_null(node["anyOf"])
        if len(options) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] are not structural: {node['anyOf']}")
        merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
        if description:
            merged["description"] = description
        return _structural(merged, defs, models, path)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out["properties"] = {
                prop: _structural(sub, defs, models, f"{path}.{prop}") for prop, sub in value.items()
            }
        elif key == "items":
            out["items"] = _structural(value, defs, models, f"{path}[]")
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out["additionalProperties"] = _structural(value, defs, models, f"{path}{{}}")
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 gives the bound; OpenAPI v3.0 (Kubernetes) wants a flag beside min/max.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "integer" if all(isinstance(v, int) for v in out["enum"]) else "string"
    return out


def _nested_model(annotation: Any) -> type[api.ApiModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, api.ApiModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _attach_factory_defaults(model: type[api.ApiModel], node: dict[str, Any]) -> None:
    """pydantic leaves ``default_factory`` values out of JSON Schema; the CRD wants them."""
    for name, field in model.model_fields.items():
        sub = node.get("properties", {}).get(field.alias or name)
        if sub is None:
            continue
        if field.default_factory is not None:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, api.ApiModel):
                sub["default"] = value.to_wire()
            elif not isinstance(value, BaseModel):  # metadata belongs to the API server
                sub["default"] = to_jsonable_python(value)
        nested = _nested_model(field.annotation)
        if nested is not None:
            target = sub["items"] if sub.get("type") == "array" else sub
            _attach_factory_defaults(nested, target)


def _drop_null_defaults(node: dict[str, Any]) -> None:
    for sub in node.get("properties", {}).values():
        _drop_null_defaults(sub)
    if "items" in node:
        _drop_null_defaults(node["items"])
    if "default" in node and node["default"] is None:
        del node["default"]


def _require_descriptions(node: dict[str, Any], path: str) -> None:
    for prop, sub in node.get("properties", {}).items():
        if path == "" and prop == "metadata":
            continue
        if not sub.get("description"):
            raise SchemaError(
                f"{path}.{prop} has no description: add Field(description=...) in rlaif_api.spec"
            )
        _require_descriptions(sub, f"{path}.{prop}")
    if "items" in node:
        _require_descriptions(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _require_descriptions(node["additionalProperties"], f"{path}{{}}")


def openapi_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of an RLAIFJob, as the CRD embeds it."""
    raw = api.RLAIFJob.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _structural(raw, defs, _models_by_title(), "")
    # The API server owns metadata's schema: a CRD may not even describe it.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of this object: rlaif.dev/v1alpha1.",
    }
    schema["properties"]["kind"] = {"type": "string", "description": "Kind of this object: RLAIFJob."}
    schema["required"] = ["spec"]
    schema["x-kubernetes-validations"] = [api.IMMUTABLE_AFTER_START_RULE.to_schema()]
    _attach_factory_defaults(api.RLAIFJob, schema)
    _drop_null_defaults(schema)
    _require_descriptions(schema, "")
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the run."},
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.currentStage",
        "description": "Stage running or next; once ended, the stage it ended in.",
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "Stages done of stages listed.",
    },
    {
        "name": "Stage-%",
        "type": "integer",
        "jsonPath": ".status.progressPercentage",
        "description": "Share of the running stage's work done (live, from its pods' metrics).",
    },
    {
        "name": "Win-Rate",
        "type": "number",
        "format": "float",
        "jsonPath": ".status.results.winRateVsInitial",
        "description": "Win rate against the initial policy.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # -o wide: why the job is where it is, without `kubectl describe`
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Reason of the Ready condition: what the job waits for, or why it ended.",
    },
    {
        "name": "Attempt",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.currentAttempt",
        "description": "Attempt number of the current stage.",
    },
    {
        "name": "Queue",
        "type": "string",
        "priority": 1,
        "jsonPath": ".spec.runPolicy.queueName",
        "description": "Kueue LocalQueue of the stage Jobs.",
    },
    {
        "name": "Message",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
        "description": "Message of the Ready condition.",
    },
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "annotations": {"rlaif.dev/generated-by": "python -m rlaif_api.crd"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated sub-schemas are written out in full: anchors are legal YAML but unreadable in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    header = "# Generated by `python -m rlaif_api.crd` from api/rlaif_api/spec.py. Do not edit by hand.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlaif_api.crd",
        description="Generate the RLAIFJob CRD YAML from the pydantic models (the single source of truth).",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help=f"write here (e.g. crds/{CRD_FILENAME}) instead of standard output"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --output differs from what would be generated"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if args.output is None:
            parser.error("--check needs --output")
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: regenerate it with `make crds`", file=sys.stderr)
            return 1
        return 0
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
