"""Typed stage summaries: what each stage reports when it ends, and which of it reaches ``status.results``.

A stage's summary is one JSON object. The trainer writes it to the pod's termination log (and to its
artifact's ``DONE`` marker); the operator copies it into ``status.stages.<stage>.metrics`` and the
fields marked :class:`Result` into ``status.results``. The mapping is read off these models
(:func:`result_keys`), so the key a stage emits and the key the operator reads are one declaration:
renaming a field renames both.

Summaries allow extra keys (``resumed``, ``skipped``, and whatever a stage adds later reach
``metrics`` unchanged); the declared fields are the ones the pipeline's table and the status read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Result:
    """Marks a summary field whose value the operator copies into ``status.results.<field>`` (snake_case)."""

    field: str


class StageSummary(BaseModel):
    """Base of the stage summaries: unknown keys are kept, in order, after the declared ones."""

    model_config = ConfigDict(extra="allow")

    resumed: bool | None = None  # the stage found its artifact complete (DONE) and did not run again

    def to_message(self) -> dict[str, Any]:
        """The summary as the stage reports it: the one serialisation of the termination message,
        the ``DONE`` marker and the pipeline's summary. Fields the stage did not set are left out;
        a field it set to ``None`` stays, as ``null`` (e.g. a pointwise labeler's consistency,
        which has no meaning there)."""
        return self.model_dump(mode="json", exclude_unset=True)


class LabelSummary(StageSummary):
    """The label stage: how many pairs were labelled and how consistent the labeler was."""

    pairs: int
    consistency_rate: Annotated[float | None, Result("labeler_position_consistency")] = None
    mean_confidence: float | None = None
    mean_p_a: float | None = None
    mode: str | None = None
    provider: str | None = None
    labelled_now: int | None = None
    pairs_per_s: float | None = None
    candidates: str | None = None
    # dataset.calibrationPairs: the labeler against human preferences (the paper's labeler alignment)
    calibration_pairs: int | None = None
    calibration_alignment: Annotated[float | None, Result("labeler_alignment")] = None
    calibration_alignment_ci_low: float | None = None
    calibration_position_bias_rate: Annotated[float | None, Result("labeler_position_bias_rate")] = None
    calibration_mean_confidence: Annotated[float | None, Result("labeler_mean_confidence")] = None
    # resources.label.shards > 1: the merged summary has ``shards``; a pod that labelled only its
    # shard (and did not merge) reports ``shard`` too, and the operator skips its message
    shards: int | None = None
    shard: int | None = None


class RewardSummary(StageSummary):
    """The reward stage: held-out accuracy of the reward model on the AI labels."""

    accuracy: Annotated[float | None, Result("reward_model_accuracy")] = None
    loss: float | None = None
    eval_loss: float | None = None
    samples_per_s: float | None = None
    train_pairs: int | None = None
    eval_pairs: int | None = None
    steps: int | None = None
    resumed_from_step: int | None = None
    processes: int | None = None
    loss_type: str | None = None
    lora: bool | None = None
    # the quality gate: the accuracy's 95% Wilson interval against rewardModel.minHeldOutAccuracy
    accuracy_ci_low: Annotated[float | None, Result("reward_model_accuracy_ci_low")] = None
    accuracy_ci_high: float | None = None
    min_held_out_accuracy: float | None = None
    gate_passed: bool | None = None


class RLSummary(StageSummary):
    """The rl stage: reward and KL to the initial policy over the last steps, and throughput."""

    stage: str = "rl"
    algorithm: str | None = None
    reward_source: str | None = None
    kl_estimator: str | None = None
    kl_coef: float | None = None
    steps: int | None = None
    processes: int | None = None
    initial_reward: float | None = None
    headline_steps: int | None = None  # initial and final reward are means over this many steps each
    final_reward: Annotated[float | None, Result("final_reward")] = None
    final_kl: Annotated[float | None, Result("final_kl")] = None
    final_entropy: float | None = None
    final_response_length: float | None = None
    initial_response_length: float | None = None
    tokens_per_s: float | None = None
    generation_s: float | None = None
    reward_s: float | None = None
    training_s: float | None = None
    resumed_from_step: int | None = None
    wall_s: float | None = None
    replicas_in_sync: bool | None = None


class EvaluateSummary(StageSummary):
    """The evaluate stage: the trained policy's win rate against the initial one, by the AI judge."""

    stage: str = "evaluate"
    prompts: int | None = None
    samples_per_prompt: int | None = None
    # (a) the reward RL optimised, initial against trained, paired by prompt
    reward_initial: float | None = None
    reward_trained: float | None = None
    reward_gain: Annotated[float | None, Result("reward_gain")] = None
    reward_gain_ci_low: Annotated[float | None, Result("reward_gain_ci_low")] = None
    reward_gain_ci_high: float | None = None
    reward_gain_p_value: float | None = None
    # (c) ROUGE-L against the references: a signal the policy never optimised
    rouge_l_initial: float | None = None
    rouge_l_trained: float | None = None
    rouge_l_gain: Annotated[float | None, Result("rouge_l_gain")] = None
    rouge_l_gain_ci_low: float | None = None
    rouge_l_gain_ci_high: float | None = None
    rouge_l_gain_p_value: Annotated[float | None, Result("rouge_l_gain_p_value")] = None
    # (b) the AI judge, and its A/A null (two samples of the initial policy), which should be 0.5
    win_rate_vs_initial: Annotated[float | None, Result("win_rate_vs_initial")] = None
    win_rate_ci_low: Annotated[float | None, Result("win_rate_ci_low")] = None
    win_rate_ci_high: Annotated[float | None, Result("win_rate_ci_high")] = None
    soft_win_rate: float | None = None
    win_rate_equal_length: float | None = None
    aa_win_rate: Annotated[float | None, Result("aa_win_rate")] = None
    aa_win_rate_ci_low: float | None = None
    aa_win_rate_ci_high: float | None = None
    judge_is_reward_source: bool | None = None
    ties: int | None = None
    judge_consistency: float | None = None
    mean_length_trained: float | None = None
    mean_length_initial: float | None = None
    wall_s: float | None = None


def result_keys(model: type[StageSummary]) -> dict[str, str]:
    """``{summary key: status.results field}`` for one summary model, read off its :class:`Result` marks."""
    return {
        name: mark.field
        for name, info in model.model_fields.items()
        for mark in info.metadata
        if isinstance(mark, Result)
    }


def results_of(model: type[StageSummary], summary: dict[str, Any]) -> dict[str, float]:
    """The ``status.results`` fields a stage's summary fills: numbers only, so a missing, null or
    malformed value leaves the field as it was instead of failing the reconcile."""
    out: dict[str, float] = {}
    for key, target in result_keys(model).items():
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[target] = float(value)
    return out


__all__ = [
    "EvaluateSummary",
    "LabelSummary",
    "RLSummary",
    "Result",
    "RewardSummary",
    "StageSummary",
    "result_keys",
    "results_of",
]
