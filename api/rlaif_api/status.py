"""The RLAIFJob status, written by the operator only, and the :class:`Reason` of every condition and event."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import Field

from rlaif_api.contract import Phase, Stage
from rlaif_api.types import ApiModel, KubeObject


class Reason(str, Enum):
    """Every CamelCase reason the operator writes into a condition or an Event. They are an API:
    ``kubectl wait``, the Argo CD health check and alerts match on them, so they only ever grow."""

    # The Running condition while a stage makes progress, and the job-level outcomes.
    PENDING = "Pending"
    STAGE_RUNNING = "StageRunning"
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    BACKOFF_RETRY = "BackoffRetry"
    ALL_STAGES_SUCCEEDED = "AllStagesSucceeded"
    BAD_INPUT = "BadInput"
    # The reward stage's quality gate: the reward model is not measurably better than chance on its
    # held-out pairs (rewardModel.minHeldOutAccuracy), so RL does not run on it.
    REWARD_MODEL_BELOW_GATE = "RewardModelBelowGate"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    # Waiting: the job cannot start or continue until something outside it changes.
    INVALID_SPEC = "InvalidSpec"
    WORKSPACE_CLAIM_NOT_FOUND = "WorkspaceClaimNotFound"
    NO_TRAINER_IMAGE = "NoTrainerImage"
    STAGE_POD_WAITING = "StagePodWaiting"
    STAGE_JOB_REFUSED = "StageJobRefused"
    # A multi-node stage (resources.<stage>.nodes > 1) needs JobSet, which the cluster does not serve.
    JOBSET_NOT_INSTALLED = "JobSetNotInstalled"
    # The Queued condition: Kueue holds the stage Job (never admitted yet, or preempted).
    PREEMPTED = "Preempted"
    # More job-level outcomes.
    QUEUE_TIMEOUT_EXCEEDED = "QueueTimeoutExceeded"
    STAGE_JOB_INVALID = "StageJobInvalid"
    # The operator-run labeler server (labeler.server): its LabelerServerReady condition, and the
    # wait (and, past labeler.server.readyTimeoutSeconds, the failure) of a stage that needs it.
    LABELER_SERVER_READY = "LabelerServerReady"
    LABELER_SERVER_STARTING = "LabelerServerStarting"
    LABELER_SERVER_NOT_READY = "LabelerServerNotReady"
    LABELER_SERVER_NOT_NEEDED = "LabelerServerNotNeeded"
    # Events only.
    STAGE_STARTED = "StageStarted"
    STAGE_RESUMED = "StageResumed"
    STAGE_SUCCEEDED = "StageSucceeded"
    STAGE_FAILED = "StageFailed"
    PHASE_CHANGED = "PhaseChanged"
    RESUMED = "Resumed"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value


#: The reasons that mean "waiting on something outside the job": the Running condition is False.
WAIT_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.WORKSPACE_CLAIM_NOT_FOUND,
        Reason.NO_TRAINER_IMAGE,
        Reason.STAGE_POD_WAITING,
        Reason.STAGE_JOB_REFUSED,
        Reason.JOBSET_NOT_INSTALLED,
        Reason.LABELER_SERVER_STARTING,
    }
)

ConditionType = Literal[
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
    "Ready",
    "Queued",
    "Reconciling",
    "Stalled",
    "LabelerServerReady",
]


class Condition(ApiModel):
    """A kstatus-compatible condition (metav1.Condition)."""

    type: ConditionType = Field(
        description="Running, Succeeded, Failed, Suspended, Ready, Queued, kstatus' Reconciling"
        " (the job waits or works towards its end) and Stalled (it failed or its spec is refused), and"
        " LabelerServerReady (only with labeler.server: whether the operator-run labeler server serves)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, Field(max_length=1024, pattern=r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$")] = (
        Field("", description="CamelCase machine-readable reason for the last transition.")
    )
    message: Annotated[str, Field(max_length=32768)] = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, ge=0, description="The metadata.generation this condition was computed from."
    )


class ProgressMetric(ApiModel):
    """One live metric of a running stage, as in Kubeflow Trainer's ``trainerStatus.metrics``."""

    name: Annotated[str, Field(min_length=1, max_length=63)] = Field(
        description="The metric: reward, kl, loss, pairsLabelled or samplesPerSecond."
    )
    value: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="Its latest value, as a decimal string."
    )


class StageProgress(ApiModel):
    """Live progress of a running stage, read from its pods' metrics port by the operator (shaped
    after Kubeflow Trainer's ``trainerStatus``). Written at most once per 30 s per job."""

    progress_percentage: int | None = Field(
        None, ge=0, le=100, description="Share of the stage's work done, 0 to 100."
    )
    estimated_remaining_seconds: int | None = Field(
        None, ge=0, description="Seconds until the stage's work is done, at the rate so far."
    )
    metrics: list[ProgressMetric] = Field(
        default_factory=list, max_length=8, description="The latest headline metrics of the stage."
    )
    last_updated_time: str = Field(description="When these values were read (RFC 3339).")


class StageStatus(ApiModel):
    """Progress of one stage."""

    state: Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Skipped"] = Field(
        "Pending",
        description="Pending, Queued (its Job waits for Kueue to admit it), Running, Succeeded, Failed or Skipped.",
    )
    job_name: str | None = Field(None, description="Name of the current or last batch/v1 Job of this stage.")
    attempts: int = Field(0, ge=0, description="Pods started for this stage, retries included.")
    start_time: str | None = Field(
        None, description="When the stage first started running: created, or admitted by Kueue (RFC 3339)."
    )
    completion_time: str | None = Field(
        None, description="When the stage succeeded or finally failed (RFC 3339)."
    )
    next_retry_time: str | None = Field(
        None, description="When the next attempt may start, during retry backoff (RFC 3339)."
    )
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        None, description="Last message, e.g. the failure reason."
    )
    metrics: KubeObject | None = Field(
        None, description="Headline metrics from the stage's summary (its termination message)."
    )
    progress: StageProgress | None = Field(
        None, description="Live progress while the stage runs, from its pods' metrics."
    )


class StagesStatus(ApiModel):
    """Progress per stage."""

    label: StageStatus | None = Field(None, description="The label stage.")
    reward: StageStatus | None = Field(None, description="The reward stage.")
    rl: StageStatus | None = Field(None, description="The rl stage.")
    evaluate: StageStatus | None = Field(None, description="The evaluate stage.")


class ArtifactsStatus(ApiModel):
    """Where each stage left its output, as paths inside the workspace volume."""

    labels: str | None = Field(None, description="Directory of the AI preference labels.")
    reward_model: str | None = Field(None, description="Directory of the trained reward model.")
    policy: str | None = Field(None, description="Directory of the trained policy (LoRA adapter).")
    report: str | None = Field(None, description="Directory of the evaluation report and plots.")


class ResultsStatus(ApiModel):
    """Headline results, copied from the stages' summaries."""

    win_rate_vs_initial: float | None = Field(
        None, description="Win rate of the trained policy against the initial policy, by the AI judge."
    )
    win_rate_ci_low: float | None = Field(
        None, description="Lower end of the win rate's 95% confidence interval."
    )
    win_rate_ci_high: float | None = Field(
        None, description="Upper end of the win rate's 95% confidence interval."
    )
    labeler_position_consistency: float | None = Field(
        None, description="Share of pairs the labeler judged the same way in both orders."
    )
    reward_model_accuracy: float | None = Field(
        None, description="Held-out accuracy of the reward model on the AI labels."
    )
    final_reward: float | None = Field(None, description="Mean reward over the last RL steps.")
    final_kl: float | None = Field(None, description="Mean KL to the initial policy over the last RL steps.")
    labeler_alignment: float | None = Field(
        None, description="Share of dataset.calibrationPairs where the labeler prefers the human's choice."
    )
    labeler_position_bias_rate: float | None = Field(
        None,
        description="Share of the calibration pairs where the response in the same position wins in both orders (pairwise labelers).",
    )
    labeler_mean_confidence: float | None = Field(
        None, description="Mean |p - 0.5| * 2 of the labeler on the calibration pairs."
    )
    reward_model_accuracy_ci_low: float | None = Field(
        None,
        description="Lower end of the 95% Wilson interval of the reward model's held-out accuracy (the quality gate's figure).",
    )
    reward_gain: float | None = Field(
        None,
        description="Held-out mean of the reward RL optimised, trained minus initial policy (paired by prompt).",
    )
    reward_gain_ci_low: float | None = Field(None, description="Lower end of reward_gain's 95% interval.")
    rouge_l_gain: float | None = Field(
        None,
        description="Held-out ROUGE-L against dataset.evalReferences, trained minus initial: a signal RL never optimised.",
    )
    rouge_l_gain_p_value: float | None = Field(
        None, description="Two-sided paired sign-flip p-value of rouge_l_gain."
    )
    aa_win_rate: float | None = Field(
        None,
        description="The judge's win rate of the initial policy against itself (different seeds): the null, which should be 0.5.",
    )


class LabelerServerStatus(ApiModel):
    """The operator-run labeler server (labeler.server), while a stage that asks the labeler runs."""

    endpoint: str = Field(description="The URL the stages call, e.g. http://myjob-labeler:8000/v1.")
    ready_replicas: int = Field(0, ge=0, description="Server pods that are ready.")
    waiting_since: str | None = Field(
        None,
        description="Since when a stage waits for the server to become ready (RFC 3339); unset once it serves.",
    )


class RLAIFJobStatus(ApiModel):
    """Observed state, written by the operator only."""

    phase: Phase | None = Field(
        None,
        description="Summary of the conditions: Pending, Labeling, TrainingRewardModel, OptimizingPolicy, Evaluating, Queued (a stage Job waits for Kueue), Succeeded, Failed or Suspended.",
    )
    current_stage: Stage | None = Field(
        None, description="The stage running or next to run; once the job ended, the stage it ended in."
    )
    progress: str | None = Field(None, description="Stages done out of stages listed, e.g. 2/4.")
    progress_percentage: int | None = Field(
        None,
        ge=0,
        le=100,
        description="The running stage's stages.<stage>.progress.progressPercentage, here for the printer column.",
    )
    current_attempt: int | None = Field(
        None, ge=0, description="Attempt number of the current stage's latest Job (1 unless it was retried)."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The metadata.generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Running, Succeeded, Failed, Suspended, Ready and Queued, and kstatus' Reconciling and Stalled.",
    )
    stages: StagesStatus | None = Field(None, description="Progress per stage.")
    artifacts: ArtifactsStatus | None = Field(None, description="Where the artifacts are.")
    results: ResultsStatus | None = Field(None, description="Headline results.")
    start_time: str | None = Field(
        None,
        description="When the first stage started running: created, or admitted by Kueue when runPolicy.queueName is set (RFC 3339). The spec is immutable from then on, and activeDeadlineSeconds counts from it.",
    )
    completion_time: str | None = Field(None, description="When the job succeeded or failed (RFC 3339).")
    labeler_server: LabelerServerStatus | None = Field(
        None, description="The labeler server the operator runs (labeler.server), while a stage needs it."
    )
