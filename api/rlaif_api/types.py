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

# Kubernetes' own rules (k8s.io/apimachinery/pkg/util/validation) for what the operator copies into
# a stage Job, so that a spec the API server would refuse as a Job is refused as an RLAIFJob, with
# the field named, instead of failing at its first stage. The patterns are RE2 and Rust-regex alike.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"  # at most 63
LABEL_VALUE_PATTERN = rf"^({_NAME_PART})?$"
# A qualified name: an optional DNS-subdomain prefix and "/", then a name part. Annotation keys are
# checked lower-cased by the API server, so their prefix may use capitals.
LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME_PART}$"
ANNOTATION_KEY_PATTERN = (
    rf"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*/)?{_NAME_PART}$"
)
_PREFIX_LENGTH_PATTERN = r"^[^/]{1,253}/"  # the prefix, when there is one, is at most 253 long
_LABEL_KEY_RE, _ANNOTATION_KEY_RE = re.compile(LABEL_KEY_PATTERN), re.compile(ANNOTATION_KEY_PATTERN)
_PREFIX_LENGTH_RE = re.compile(_PREFIX_LENGTH_PATTERN)
# An image reference as the kubelet parses it (github.com/distribution/reference): [domain[:port]/]
# path[:tag][@digest], lower-case path components; "rlaif trainer:1" would end in InvalidImageName.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
IMAGE_PATTERN = (
    rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$"
)
# Environment variable names: printable ASCII except "=" (Kubernetes >= 1.34 relaxed the C-identifier rule).
ENV_NAME_PATTERN = r"^[ -<>-~]+$"


def qualified_key_ok(key: str, *, annotation: bool = False) -> bool:
    """Python twin of :func:`_key_rule`'s CEL."""
    pattern = _ANNOTATION_KEY_RE if annotation else _LABEL_KEY_RE
    return bool(pattern.match(key)) and ("/" not in key or bool(_PREFIX_LENGTH_RE.match(key)))


def _cel_string(pattern: str) -> str:
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


def key_rule(*, annotation: bool = False, var: str = "k") -> str:
    """CEL: ``var`` is a qualified name (a label key, or with ``annotation`` an annotation key)."""
    pattern = ANNOTATION_KEY_PATTERN if annotation else LABEL_KEY_PATTERN
    return f"{var}.matches({_cel_string(pattern)}) && (!{var}.contains('/') || {var}.matches({_cel_string(_PREFIX_LENGTH_PATTERN)}))"


_KEY_RULES = (
    "an optional DNS-subdomain prefix of at most 253 characters and '/', then at most 63 "
    "characters, alphanumeric at both ends, with '-', '_' or '.' between"
)


def _map_keys(what: str, *, annotation: bool = False) -> dict[str, Any]:
    message = f"{what} keys must be Kubernetes qualified names: {_KEY_RULES}"
    return {
        "x-kubernetes-validations": [
            {"rule": f"self.all(k, {key_rule(annotation=annotation)})", "message": message}
        ]
    }


def _checked_keys(what: str, *, annotation: bool = False) -> Callable[[dict[str, str]], dict[str, str]]:
    def check(value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not qualified_key_ok(k, annotation=annotation)]
        if bad:
            raise ValueError(f"{what} keys must be Kubernetes qualified names: {_KEY_RULES}; got {bad[0]!r}")
        return value

    return check


DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
#: Pod labels and node selectors: qualified-name keys, label values.
LabelMap = Annotated[
    dict[str, LabelValue],
    Field(max_length=MAX_LIST, json_schema_extra=_map_keys("label")),
    AfterValidator(_checked_keys("label")),
]
# At most 32 values of 4096 characters, so that with their keys they stay within the 256 KiB the
# API server allows a pod's annotations in all.
MAX_ANNOTATIONS = 32
AnnotationMap = Annotated[
    dict[str, Annotated[str, Field(max_length=4096)]],
    Field(max_length=MAX_ANNOTATIONS, json_schema_extra=_map_keys("annotation", annotation=True)),
    AfterValidator(_checked_keys("annotation", annotation=True)),
]
ImageRef = Annotated[str, Field(min_length=1, max_length=MAX_PATH, pattern=IMAGE_PATTERN)]
EnvName = Annotated[str, Field(min_length=1, max_length=MAX_SHORT, pattern=ENV_NAME_PATTERN)]
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
