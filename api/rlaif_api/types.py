"""Shared building blocks of the RLAIFJob API: its identity, field types and the :class:`CelRule`.

Every cross-field rule is declared once, as a :class:`CelRule` carrying both its CEL expression and
an equivalent Python predicate, so the API server and the local runner reject the same specs with
the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "rlaif.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLAIFJob"
PLURAL = "rlaifjobs"
SINGULAR = "rlaifjob"
SHORT_NAMES = ["rlaif"]
CATEGORIES = ["rlaif", "ml"]

# The Kubernetes resource.Quantity grammar, as controller-gen emits it for int-or-string quantities.
# The sign is left out on purpose: a negative CPU, memory or disk size is never meaningful here.
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
# RFC 1123 label, which is what Kubernetes requires of most object names referenced here.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Bounds keep CEL's estimated cost finite (the API server refuses rules it cannot bound) and stop a
# typo from storing megabytes in etcd.
MAX_SHORT = 253
MAX_PATH = 4096
MAX_TEXT = 16384
MAX_LIST = 64


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("must be a Kubernetes quantity such as 500m, 16Gi or 4, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be a non-negative Kubernetes quantity, got {value}")
        return value
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a valid Kubernetes quantity (e.g. 500m, 16Gi, 4)")
    return value


# Strict, like the API server's int-or-string: YAML's `true` or `1.5` is not a quantity.
Quantity = Annotated[
    StrictInt | StrictStr,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

ShortStr = Annotated[str, Field(min_length=1, max_length=MAX_SHORT)]
PathStr = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
K8sName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
StringMap = Annotated[dict[str, Annotated[str, Field(max_length=MAX_TEXT)]], Field(max_length=MAX_LIST)]
# Core Kubernetes types (affinity, volume sources, env sources) are passed through to the pod as
# they are: embedding their full schemas would make the CRD enormous, and the API server validates
# them anyway when the operator creates the stage Job.
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


@dataclass(frozen=True)
class CelRule:
    """One cross-field rule, stated once for both the API server (CEL) and pydantic (Python).

    ``field_path`` is relative to the object the rule is attached to; the API server reports the
    error at that path, and pydantic prefixes the message with it.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _apply_cel_rules(self) -> ApiModel:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML/JSON: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
