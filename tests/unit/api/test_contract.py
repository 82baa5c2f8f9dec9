"""The stage contract's declarations agree with the API models they feed."""

from __future__ import annotations

import re
from pathlib import Path

import rlaif_api as api
from rlaif_api.contract import PHASE_OF_STAGE, RESULT_KEYS, STAGE_ORDER, STAGES
from rlaif_api.status import WAIT_REASONS, Reason
from rlaif_api.summaries import result_keys

ROOT = Path(__file__).resolve().parents[3]


def test_every_results_field_is_fed_by_exactly_one_summary_field():
    targets = [field for s in STAGES.values() for field in result_keys(s.summary).values()]
    assert sorted(targets) == sorted(api.ResultsStatus.model_fields), (
        "each status.results field needs exactly one Result(...) mark on a stage summary field"
    )


def test_result_keys_are_read_off_the_summary_models():
    assert RESULT_KEYS["evaluate"]["win_rate_vs_initial"] == "win_rate_vs_initial"
    for name, stage in STAGES.items():
        for key in RESULT_KEYS[name]:
            assert key in stage.summary.model_fields, (
                f"{name}: {key} is not a field of {stage.summary.__name__}"
            )


def test_stage_registry_matches_the_api():
    assert tuple(STAGES) == STAGE_ORDER
    assert set(PHASE_OF_STAGE.values()) < set(
        api.RLAIFJobStatus.model_fields["phase"].annotation.__args__[0].__args__
    )
    for stage in STAGES.values():
        assert stage.artifact in api.ArtifactPaths.model_fields


def test_reasons_are_condition_reasons_and_documented():
    for reason in Reason:  # the pattern of condition reasons in the CRD accepts every one
        api.Condition(type="Running", status="True", reason=reason.value, last_transition_time="t")
    assert set(Reason) >= WAIT_REASONS
    status_model = (
        (ROOT / "docs" / "architecture.md").read_text().split("## Status model", 1)[1].split("\n## ", 1)[0]
    )
    documented = set(re.findall(r"`([A-Z][A-Za-z]+)`", status_model)) - {
        "Running",
        "Succeeded",
        "Failed",
        "Ready",
        "Queued",
        "Reconciling",
        "Stalled",  # condition types, not reasons
    }
    values = {r.value for r in Reason}
    assert documented <= values, f"reasons in docs/architecture.md but not in Reason: {documented - values}"
