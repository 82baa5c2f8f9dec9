"""The stage contract between the operator and the trainer, in one place.

The operator runs ``rlaif-train <stage> --config <file> --termination-log <path>`` in each stage
pod and reads back two things: the exit code, which says whether a failure is worth retrying, and the
termination message, a one-line JSON summary of at most :data:`TERMINATION_MESSAGE_LIMIT` bytes.
Everything both sides must agree on is declared here: the stages and their phases, artifact
directories and summary models, the exit codes, the environment variables and the CLI flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from rlaif_api.summaries import (
    EvaluateSummary,
    LabelSummary,
    RewardSummary,
    RLSummary,
    StageSummary,
    result_keys,
)

Stage = Literal["label", "reward", "rl", "evaluate"]
STAGE_ORDER: tuple[str, ...] = ("label", "reward", "rl", "evaluate")
Phase = Literal[
    "Pending",
    "Labeling",
    "TrainingRewardModel",
    "OptimizingPolicy",
    "Evaluating",
    "Queued",
    "Succeeded",
    "Failed",
    "Suspended",
]

#: The artifact directories under ``<workspace root>/<namespace>/<job>/``.
ARTIFACT_DIRS = {
    "candidates": "candidates",
    "labels": "labels",
    "reward_model": "reward_model",
    "policy": "policy",
    "eval": "eval",
}


@dataclass(frozen=True)
class StageContract:
    """One stage: its phase while it runs, the artifact whose ``DONE`` marker says it finished, and
    the model of the summary it reports."""

    name: str
    phase: str
    artifact: str  # a key of ARTIFACT_DIRS (and a field of rlaif_api.resolve.ArtifactPaths)
    summary: type[StageSummary]
    help: str


STAGES: dict[str, StageContract] = {
    s.name: s
    for s in (
        StageContract(
            "label",
            "Labeling",
            "labels",
            LabelSummary,
            "AI preference labeling: sample candidate pairs if needed, then soft-label them",
        ),
        StageContract(
            "reward",
            "TrainingRewardModel",
            "reward_model",
            RewardSummary,
            "train the reward model on the soft labels",
        ),
        StageContract(
            "rl",
            "OptimizingPolicy",
            "policy",
            RLSummary,
            "optimize the policy against the reward with a KL penalty",
        ),
        StageContract(
            "evaluate",
            "Evaluating",
            "eval",
            EvaluateSummary,
            "win rate of the trained policy against the initial one, by the AI judge",
        ),
    )
}
PHASE_OF_STAGE: dict[str, str] = {name: s.phase for name, s in STAGES.items()}
#: ``{stage: {summary key: status.results field}}``, derived from the summary models.
RESULT_KEYS: dict[str, dict[str, str]] = {name: result_keys(s.summary) for name, s in STAGES.items()}

# -- exit codes -------------------------------------------------------------------------------------
# EXIT_BAD_INPUT means the input itself is wrong (a missing file, a malformed JSONL line, a prompt
# longer than the model's context), so retrying cannot help and the job fails at once. Any other
# non-zero code is treated as transient (OOM kill, node loss, a flaky endpoint).
EXIT_OK = 0
# sysexits.h EX_DATAERR: "the input data was incorrect in some way".
EXIT_BAD_INPUT = 65
EXIT_RETRYABLE = 1

# -- the stage pod's command line -------------------------------------------------------------------
TRAINER_COMMAND = "rlaif-train"
TRAINER_MODULE = "rlaif_trainer.cli"  # for `accelerate launch -m` with more than one GPU
FLAG_CONFIG = "--config"
FLAG_TERMINATION_LOG = "--termination-log"
FLAG_NO_PROGRESS = "--no-progress"
FLAG_METRICS_PORT = "--metrics-port"
#: Top log-probabilities the openai labeler asks an endpoint for (OpenAI's cap, vLLM's default
#: --max-logprobs): enough for "1"/"2", "Yes"/"No" and the nine score tokens of d-RLAIF. The
#: operator-run labeler server allows as many.
LABELER_TOP_LOGPROBS = 20
#: The rendezvous port of a multi-node stage, on its rank-0 pod.
RENDEZVOUS_PORT = 29500


def launch_command(
    stage_args: list[str],
    *,
    gpus_per_node: int,
    nodes: int = 1,
    node_rank: str = "0",
    main_process_ip: str = "127.0.0.1",
    main_process_port: int = RENDEZVOUS_PORT,
) -> list[str]:
    """The stage pod's command line: the trainer CLI alone, or under ``accelerate launch``.

    One process per GPU, at least one per node. With ``nodes > 1`` every node runs one launcher
    agent with its ``node_rank`` (the operator passes ``$(JOB_COMPLETION_INDEX)``, which the kubelet
    expands) and a rendezvous at rank 0's stable hostname. Tests launch the same command on loopback
    with a literal rank, so the operator and the trainer share one launch contract.
    """
    per_node = max(gpus_per_node, 1)
    if nodes <= 1 and per_node == 1:
        return [TRAINER_COMMAND, *stage_args]
    launcher = ["accelerate", "launch", "--num_processes", str(per_node * max(nodes, 1))]
    if nodes > 1:
        launcher += [
            "--num_machines",
            str(nodes),
            "--machine_rank",
            node_rank,
            "--main_process_ip",
            main_process_ip,
            "--main_process_port",
            str(main_process_port),
        ]
    # accelerate's name for "distributed data parallel through torchrun"; on CPU it joins gloo.
    launcher.append("--multi_gpu")
    return [*launcher, "-m", TRAINER_MODULE, *stage_args]


# -- environment variables --------------------------------------------------------------------------
ENV_STAGE = "RLAIF_STAGE"
ENV_JOB = "RLAIF_JOB"
ENV_ATTEMPT = "RLAIF_ATTEMPT"
ENV_CACHE_DIR = "RLAIF_CACHE_DIR"
ENV_READONLY_CACHE_DIRS = "RLAIF_READONLY_CACHE_DIRS"
ENV_METRICS_PORT = "RLAIF_METRICS_PORT"
ENV_LOG_LEVEL = "RLAIF_LOG_LEVEL"
# Overrides the device a stage runs on (default: CUDA when available), e.g. cpu for a test.
ENV_DEVICE = "RLAIF_DEVICE"
# Secrets reach the pod only as these variables (secretKeyRef), never in the spec or the config.
ENV_LABELER_API_KEY = "RLAIF_LABELER_API_KEY"
ENV_JUDGE_API_KEY = "RLAIF_JUDGE_API_KEY"

# -- the termination message ------------------------------------------------------------------------
TERMINATION_LOG = "/dev/termination-log"
# The kubelet truncates longer termination messages, which would leave the operator unparseable JSON.
TERMINATION_MESSAGE_LIMIT = 4096


def compact_summary(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """One JSON line of at most ``limit`` bytes. Keys are dropped from the end until it fits."""
    items = list(summary.items())
    while items:
        text = json.dumps(dict(items), separators=(",", ":"), default=str)
        if len(text.encode()) <= limit:
            return text
        items.pop()
    return "{}"


__all__ = [
    "ARTIFACT_DIRS",
    "ENV_ATTEMPT",
    "ENV_CACHE_DIR",
    "ENV_DEVICE",
    "ENV_JOB",
    "ENV_JUDGE_API_KEY",
    "ENV_LABELER_API_KEY",
    "ENV_LOG_LEVEL",
    "ENV_METRICS_PORT",
    "ENV_READONLY_CACHE_DIRS",
    "ENV_STAGE",
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_RETRYABLE",
    "FLAG_CONFIG",
    "FLAG_METRICS_PORT",
    "FLAG_NO_PROGRESS",
    "FLAG_TERMINATION_LOG",
    "PHASE_OF_STAGE",
    "RESULT_KEYS",
    "STAGES",
    "STAGE_ORDER",
    "TERMINATION_LOG",
    "TERMINATION_MESSAGE_LIMIT",
    "TRAINER_COMMAND",
    "TRAINER_MODULE",
    "Phase",
    "Stage",
    "StageContract",
    "compact_summary",
]
