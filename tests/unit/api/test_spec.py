"""The pydantic models reject what the CRD rejects, with messages naming the field, and resolve jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import rlaif_api as api
from tests.api_cases import INVALID_CASES, base_job, example_jobs


def _errors(job: dict) -> str:
    with pytest.raises(ValidationError) as info:
        api.RLAIFJob.model_validate(job)
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())


def test_base_job_and_examples_are_valid():
    api.RLAIFJob.model_validate(base_job())
    for name, job in example_jobs().items():
        job["metadata"] = {"name": job["metadata"]["name"]}
        api.RLAIFJob.model_validate(job), name


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.name)
def test_invalid_spec_is_rejected_naming_the_field(case):
    assert case.field in _errors(case.job())


def test_paper_defaults():
    job = api.RLAIFJob.model_validate(base_job())
    assert job.spec.rl.kl_coef == 0.05
    assert job.spec.rl.temperature == 0.9
    assert job.spec.labeler is not None and job.spec.labeler.position_debias is True
    assert job.spec.stages == ["label", "reward", "rl", "evaluate"]
    assert job.spec.resources.for_stage("rl").gpus == 1


def test_stage_resources_override_field_by_field():
    resources = api.StageResources.model_validate(
        {"default": {"gpus": 1, "memory": "16Gi"}, "label": {"gpus": 4}, "evaluate": {"gpus": 0}}
    )
    assert resources.for_stage("label").model_dump() == {
        "gpus": 4,
        "cpu": None,
        "memory": "16Gi",
        "ephemeral_storage": None,
        "nodes": 1,
    }
    assert resources.for_stage("evaluate").gpus == 0
    assert resources.for_stage("rl").gpus == 1


def test_nodes_default_to_one_and_only_reward_and_rl_span_nodes():
    resources = api.StageResources.model_validate({"reward": {"nodes": 2}, "rl": {"nodes": 4, "gpus": 8}})
    assert [resources.for_stage(s).nodes for s in ("label", "reward", "rl", "evaluate")] == [1, 2, 4, 1]
    assert resources.for_stage("rl").gpus == 8
    for stage in ("default", "label", "evaluate"):
        with pytest.raises(ValidationError, match=f"resources.{stage}.nodes must be 1"):
            api.StageResources.model_validate({stage: {"nodes": 2}})


@pytest.mark.parametrize("quantity", ["1", "500m", "16Gi", "1.5", "2e3", 4])
def test_valid_quantities(quantity):
    api.ResourceSpec(memory=quantity)


@pytest.mark.parametrize("quantity", ["-1", "16GB", "lots", "", -3, True])
def test_invalid_quantities(quantity):
    with pytest.raises(ValidationError, match="memory"):
        api.ResourceSpec(memory=quantity)


def test_wire_form_round_trips():
    job = api.RLAIFJob.model_validate(example_jobs()["tldr-summarization.yaml"] | {"metadata": {"name": "t"}})
    again = api.RLAIFJob.model_validate(job.to_wire())
    assert again == job
    assert "klCoef" in job.to_wire()["spec"]["rl"]


def test_labeler_api_chat_round_trips_and_defaults_to_completions():
    job = api.RLAIFJob.model_validate(example_jobs()["openai-labeler.yaml"] | {"metadata": {"name": "t"}})
    assert job.spec.labeler is not None and job.spec.labeler.api == "completions"
    wire = job.to_wire()
    wire["spec"]["labeler"]["api"] = "chat"
    again = api.RLAIFJob.model_validate(wire)
    assert again.spec.labeler is not None and again.spec.labeler.api == "chat"
    assert again.to_wire()["spec"]["labeler"]["api"] == "chat"
    assert api.LabelerSpec().api == "completions"


def test_labeler_api_rejects_an_unknown_value():
    with pytest.raises(ValidationError, match="'completions' or 'chat'"):
        api.LabelerSpec(provider="openai", endpoint="http://h/v1", model="m", api="responses")


def test_resolve_stage_configs(tmp_path: Path):
    job_file = tmp_path / "job.yaml"
    job = base_job("demo")
    job["spec"]["dataset"]["evalPrompts"] = "/abs/eval.jsonl"
    job["spec"]["policy"]["model"] = "./models/policy"
    job_file.write_text(yaml.safe_dump(job))
    loaded = api.load_job(job_file)
    configs = api.resolve_stage_configs(loaded, tmp_path / "ws", base_dir=tmp_path)
    assert list(configs) == ["label", "reward", "rl", "evaluate"]
    label = configs["label"]
    assert label.workspace == str(tmp_path / "ws" / "default" / "demo")
    assert label.artifacts.labels == str(tmp_path / "ws" / "default" / "demo" / "labels")
    assert label.spec.dataset.prompts == str(tmp_path / "data" / "prompts.jsonl")
    assert label.spec.dataset.eval_prompts == "/abs/eval.jsonl"
    assert label.spec.policy.model == str(tmp_path / "models" / "policy")
    # Labeler, judge and reward model default to the policy model.
    assert label.spec.labeler is not None and label.spec.labeler.model == label.spec.policy.model
    assert label.spec.evaluation.judge is not None and label.spec.evaluation.judge.mode == "pointwise"
    assert label.spec.reward_model.model == label.spec.policy.model
    assert label.spec.evaluation.max_new_tokens == label.spec.rl.max_new_tokens
    # The config is the pod's JSON: it must survive a round trip through a file.
    path = tmp_path / "label.json"
    path.write_text(label.to_json())
    assert api.StageConfig.from_file(path) == label
    assert json.loads(label.to_json())["stage"] == "label"


def test_hub_ids_and_embedded_names_are_not_paths(tmp_path: Path):
    job = api.RLAIFJob.model_validate(
        base_job() | {"spec": base_job()["spec"] | {"policy": {"model": "org/model"}}}
    )
    spec = api.resolve_spec(job.spec, tmp_path)
    assert spec.policy.model == "org/model"
    job = api.RLAIFJob.model_validate(base_job())
    assert api.resolve_spec(job.spec, tmp_path).policy.model == "embedded:smollm2-135m-instruct"


def test_update_after_start_is_refused_except_suspend_and_ttl():
    started = api.RLAIFJob.model_validate(base_job() | {"status": {"startTime": "2026-01-01T00:00:00Z"}})
    suspended = started.model_copy(deep=True)
    suspended.spec.run_policy.suspend = True
    suspended.spec.run_policy.ttl_seconds_after_finished = 60
    api.check_update(started, suspended)
    changed = started.model_copy(deep=True)
    changed.spec.rl.kl_coef = 0.1
    with pytest.raises(ValueError, match="immutable once the job has started"):
        api.check_update(started, changed)
    not_started = api.RLAIFJob.model_validate(base_job())
    api.check_update(not_started, api.RLAIFJob.model_validate(base_job() | {"spec": changed.spec.to_wire()}))


def _wire_names(model: type[api.ApiModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_every_spec_field_is_classified_as_mutable_or_immutable_after_start():
    # An unlisted field would be silently changeable after start: classify it in spec.py.
    spec_lists = [api.IMMUTABLE_SPEC_FIELDS, api.SPEC_FIELDS_CHECKED_PER_FIELD]
    run_policy_lists = [api.IMMUTABLE_RUN_POLICY_FIELDS, api.MUTABLE_RUN_POLICY_FIELDS]
    for model, lists in ((api.RLAIFJobSpec, spec_lists), (api.RunPolicy, run_policy_lists)):
        listed = [field for fields in lists for field in fields]
        assert len(listed) == len(set(listed)), f"{model.__name__}: a field is listed twice"
        assert set(listed) == _wire_names(model), f"{model.__name__}: classify every field"
    for field in api.MUTABLE_RUN_POLICY_FIELDS:
        assert f"spec.runPolicy.{field}" in api.IMMUTABLE_AFTER_START_RULE.message


def test_load_job_rejects_a_non_mapping(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected an RLAIFJob mapping"):
        api.load_job(path)


def test_validate_command(tmp_path: Path, capsys):
    from rlaif_trainer.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base_job()))
    bad = tmp_path / "bad.yaml"
    job = base_job()
    job["spec"]["rl"] = {"klCoef": -1}
    bad.write_text(yaml.safe_dump(job))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 65
    assert "klCoef" in capsys.readouterr().err
