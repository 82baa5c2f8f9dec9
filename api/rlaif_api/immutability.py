"""Which spec fields may change after a job has started, as a CEL transition rule and its Python twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlaif_api.types import CelRule

if TYPE_CHECKING:
    from rlaif_api.spec import RLAIFJob

# Every spec field is in exactly one of these lists (a unit test checks), so a new field is made
# mutable or immutable on purpose rather than silently changeable after start.
IMMUTABLE_SPEC_FIELDS = (
    "policy",
    "dataset",
    "labeler",
    "rewardModel",
    "rl",
    "evaluation",
    "stages",
    "image",
    "seed",
    "resources",
    "storage",
    "podTemplate",
)
# runPolicy mixes both kinds: its own fields are split by the two lists after it.
SPEC_FIELDS_CHECKED_PER_FIELD = ("runPolicy",)
IMMUTABLE_RUN_POLICY_FIELDS = (
    "backoffLimit",
    "backoffSeconds",
    "activeDeadlineSeconds",
    "queueName",
    "priorityClassName",
)
MUTABLE_RUN_POLICY_FIELDS = ("suspend", "ttlSecondsAfterFinished", "queueTimeoutSeconds")


def _same(field: str, parent_new: str, parent_old: str) -> str:
    return (
        f"(has({parent_new}.{field}) == has({parent_old}.{field}) && "
        f"(!has({parent_new}.{field}) || {parent_new}.{field} == {parent_old}.{field}))"
    )


IMMUTABLE_AFTER_START_RULE = CelRule(
    rule=(
        "!has(oldSelf.status) || !has(oldSelf.status.startTime) || ("
        + " && ".join(_same(f, "self.spec", "oldSelf.spec") for f in IMMUTABLE_SPEC_FIELDS)
        + " && "
        + " && ".join(
            _same(f, "self.spec.runPolicy", "oldSelf.spec.runPolicy") for f in IMMUTABLE_RUN_POLICY_FIELDS
        )
        + ")"
    ),
    message=(
        "spec is immutable once the job has started (status.startTime is set), except "
        + " and ".join(f"spec.runPolicy.{f}" for f in MUTABLE_RUN_POLICY_FIELDS)
        + "; create a new RLAIFJob instead"
    ),
    field_path=".spec",
    check=lambda _: True,  # a transition rule: see check_update()
)


def check_update(old: RLAIFJob, new: RLAIFJob) -> None:
    """Python twin of :data:`IMMUTABLE_AFTER_START_RULE`, for the local runner and the operator's own checks."""
    if old.status is None or old.status.start_time is None:
        return
    old_spec, new_spec = old.spec.to_wire(), new.spec.to_wire()
    for field in IMMUTABLE_SPEC_FIELDS:
        if old_spec.get(field) != new_spec.get(field):
            raise ValueError(IMMUTABLE_AFTER_START_RULE.message)
    old_rp, new_rp = old_spec.get("runPolicy", {}), new_spec.get("runPolicy", {})
    for field in IMMUTABLE_RUN_POLICY_FIELDS:
        if old_rp.get(field) != new_rp.get(field):
            raise ValueError(IMMUTABLE_AFTER_START_RULE.message)
