"""The RLAIFJob API (``rlaif.dev/v1alpha1``): the spec models, the single source of truth for its schema.

These pydantic models serve three consumers, so they must import neither torch nor kubernetes:

* the CRD generator (:mod:`rlaif_api.crd`) turns them into the OpenAPI v3 schema, including
  the CEL ``x-kubernetes-validations`` rules declared here;
* the operator validates and resolves a job into per-stage configs;
* the trainer's local ``pipeline`` runner validates the same YAML and resolves it with the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from rlaif_api.contract import STAGE_ORDER, Stage
from rlaif_api.status import RLAIFJobStatus
from rlaif_api.types import (
    MAX_LIST,
    MAX_PATH,
    MAX_SHORT,
    AnnotationMap,
    ApiModel,
    CelRule,
    DnsSubdomain,
    EnvName,
    ImageRef,
    K8sName,
    KubeObject,
    LabelMap,
    LabelValue,
    PathStr,
    Quantity,
    ShortStr,
    Text,
    _cel_string,
    key_rule,
    qualified_key_ok,
)


class LoraSpec(ApiModel):
    """Low-rank adapters (LoRA, via peft) trained instead of the full weights."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the adapter matrices. Default 16.")
    alpha: float = Field(
        32, gt=0, le=4096, description="LoRA scaling numerator (alpha / r scales the update). Default 32."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input. Default 0.05.")
    target_modules: list[ShortStr] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        max_length=MAX_LIST,
        description="Names of the modules that get adapters, e.g. q_proj, v_proj. Default [q_proj, v_proj].",
    )


class PolicySpec(ApiModel):
    """The language model being aligned."""

    model: PathStr = Field(
        description=(
            "The initial policy: an absolute path or a path relative to the workspace (./ or ../) to a "
            "Hugging Face model directory, a hub id when the cluster can reach a hub, or "
            "'embedded:smollm2-135m-instruct' for the small model the trainer ships."
        )
    )
    lora: LoraSpec | None = Field(
        default_factory=LoraSpec,
        description="LoRA settings for RL. The frozen reference policy is the same weights with adapters disabled.",
    )
    max_prompt_length: int = Field(
        512,
        ge=8,
        le=131072,
        description="Prompts longer than this many tokens are rejected as bad input. Default 512.",
    )


class DatasetSpec(ApiModel):
    """Where prompts, and optionally given response pairs or labels, come from."""

    prompts: PathStr = Field(description="JSONL file of training prompts, one JSON object per line.")
    prompt_field: ShortStr = Field(
        "prompt", description="Key of the prompt text in each JSONL object. Default 'prompt'."
    )
    eval_prompts: PathStr | None = Field(
        None,
        description="JSONL file of held-out prompts for evaluation. Default: the last 10% of 'prompts', excluded from training.",
    )
    pairs: PathStr | None = Field(
        None,
        description=(
            "Optional JSONL of given response pairs ({id, prompt, response_a, response_b}) to label, "
            "instead of sampling two responses per prompt from the initial policy."
        ),
    )
    labels: PathStr | None = Field(
        None,
        description=(
            "Optional JSONL of already-labelled pairs ({id, prompt, response_a, response_b, p_a}) for a job "
            "that starts at the reward stage."
        ),
    )
    max_prompts: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description=(
            "Sample and label candidate pairs for at most this many training prompts (the first ones). "
            "RL still trains on every training prompt."
        ),
    )
    eval_references: PathStr | None = Field(
        None,
        description=(
            "Optional JSONL of reference responses for the held-out prompts ({id, reference}, matched to "
            "evalPrompts by id). The evaluate stage then reports ROUGE-L against them: a measure the "
            "policy never optimised."
        ),
    )
    calibration_pairs: PathStr | None = Field(
        None,
        description=(
            "Optional JSONL of pairs with a human preference ({id, prompt, response_a, response_b, p_a}: "
            "p_a 1 when a is better, 0 when b is). The label stage also labels them and reports the "
            "labeler's alignment with the human choice, its position-bias rate and its mean confidence "
            "(`rlaif-train calibrate` runs this alone)."
        ),
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the job's namespace. The value is never copied into the spec, a ConfigMap or a log."""

    name: K8sName = Field(description="Name of the Secret.")
    key: ShortStr = Field(description="Key within the Secret.")


class FewShotExample(ApiModel):
    """One worked example shown to the labeler before the pair to judge."""

    prompt: Text = Field(description="The example's context or instruction.")
    response_a: Text = Field(description="The example's first response (shown as 'Response 1').")
    response_b: Text = Field(description="The example's second response (shown as 'Response 2').")
    preferred: Literal[1, 2] = Field(description="Which response the example prefers: 1 or 2.")
    rationale: Text | None = Field(
        None, description="Optional reasoning shown before the answer (for chain-of-thought)."
    )


#: The labeler server's default image for ``engine: vllm``: a pinned vLLM release.
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"


class LabelerServerSpec(ApiModel):
    """An inference server the operator runs for the labeler: a Deployment and a Service, up while a
    stage that asks the labeler runs (label; rl with reward direct; evaluate when the judge is the
    labeler), removed when none is left, on suspend and at the end. The stages reach it as the openai
    provider's endpoint, under labeler.model as the served model name."""

    engine: Literal["vllm", "rlaif"] = Field(
        "vllm",
        description=(
            "vllm: `vllm serve` in the vLLM image, with prefix caching and enough logprobs for the label "
            "tokens. rlaif: `rlaif-train serve` in the trainer image (CPU, tests, small clusters; it serves the "
            "embedded model with no network). Default vllm."
        ),
    )
    image: ImageRef | None = Field(
        None, description=f"Server image. Default: {VLLM_IMAGE} for vllm, the trainer image for rlaif."
    )
    model: PathStr | None = Field(
        None,
        description="What the server loads (a hub id, a path in the image, or embedded:<name> for rlaif). Default: labeler.model.",
    )
    args: list[ShortStr] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Extra arguments appended to the server's command line, e.g. [--max-model-len, '4096'].",
    )
    resources: ResourceSpec | None = Field(
        None, description="Compute of each server pod. Default: 1 GPU for vllm, none for rlaif."
    )
    replicas: int = Field(1, ge=1, le=64, description="Server pods behind the Service. Default 1.")
    ready_timeout_seconds: int = Field(
        1800,
        ge=10,
        le=86400,
        description=(
            "How long a stage waits for the server to become ready before the job fails with "
            "LabelerServerNotReady (the message gives the server pod's last state). Default 1800."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1",
            message="labeler.server.resources.nodes: a server pod runs on one node; use replicas for more pods",
            field_path=".resources.nodes",
            check=lambda s: s.resources is None or s.resources.nodes == 1,
        ),
    )


class LabelerSpec(ApiModel):
    """The off-the-shelf LLM that gives AI feedback (Lee et al. 2023, §2.1)."""

    provider: Literal["hf", "openai", "python"] = Field(
        "hf",
        description=(
            "hf: a local Hugging Face model run in the stage pod. openai: an OpenAI-compatible completions or "
            "chat-completions endpoint (see api) that returns logprobs (vLLM, TGI, OpenAI). python: a Python "
            "callable, for rule-based or verifiable feedback. Default hf."
        ),
    )
    model: PathStr | None = Field(
        None, description="Labeler model (path, hub id or served model name). Default: the policy model."
    )
    endpoint: Annotated[str, Field(max_length=MAX_PATH, pattern=r"^https?://")] | None = Field(
        None,
        description="Base URL of the OpenAI-compatible API, e.g. http://vllm.llm.svc:8000/v1. Required for openai.",
    )
    api: Literal["completions", "chat"] = Field(
        "completions",
        description=(
            "For provider openai, which API of the endpoint to call. completions: POST {endpoint}/completions "
            "with the plain-text prompt and logprobs (vLLM, TGI). chat: POST {endpoint}/chat/completions with the "
            "same prompt as one user message and top_logprobs 20, for models served only as chat "
            "(OpenAI's current models, vLLM chat models); the answer is read from the first generated token's "
            "top log-probabilities. Ignored by the other providers. Default completions."
        ),
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret holding the endpoint's API key; it reaches the pod as an environment variable.",
    )
    callable: (
        Annotated[str, Field(max_length=MAX_SHORT, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None
    ) = Field(
        None,
        description="For provider python: 'package.module:function', importable in the trainer image.",
    )
    mode: Literal["pairwise", "pointwise"] = Field(
        "pairwise",
        description=(
            "pairwise: the paper's prompt asks which of two responses is better; the soft label is the softmax "
            "over the log-probabilities of '1' and '2'. pointwise: each response is judged alone against yes/no "
            "principles, and the label is sigmoid(log-odds(a) - log-odds(b)); it has no position bias, and small "
            "labelers need it. Default pairwise."
        ),
    )
    principles: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Yes/no questions for pointwise mode, e.g. 'Is the summary faithful to the text?'. Required for pointwise.",
    )
    information_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "For provider hf in pointwise mode: add one term to the principles, this weight times the response's "
            "information about its prompt under the labeler model, (log P(prompt | response) - log P(prompt)) "
            "per prompt token, read as one more log-odds (in scores and preferences alike). It sees what small "
            "labelers' yes/no answers miss (off-topic or invented content) and favours copying and length, "
            "which the principles penalise. 0 turns it off. Default 0."
        ),
    )
    preamble: Text = Field(
        "base",
        min_length=1,
        description="'base' or 'detailed' (the paper's preambles), or the full text of a custom preamble. Default base.",
    )
    few_shot: list[FewShotExample] = Field(
        default_factory=list,
        max_length=16,
        description="Worked examples placed between the preamble and the pair.",
    )
    chain_of_thought: bool = Field(
        False,
        description="Two-step chain-of-thought: generate a rationale greedily, then score. Default false.",
    )
    position_debias: bool = Field(
        True,
        description="Score every pair in both orders and average, cancelling position bias. Default true.",
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="Pairs scored per forward pass (hf) or requests in flight (openai). Default 8.",
    )
    max_concurrency: int = Field(
        8, ge=1, le=1024, description="Concurrent requests to an openai endpoint. Default 8."
    )
    max_retries: int = Field(
        5, ge=0, le=100, description="Retries on 429 and 5xx from an openai endpoint. Default 5."
    )
    request_timeout_seconds: float = Field(
        60, gt=0, le=3600, description="Timeout of one endpoint request. Default 60."
    )
    server: LabelerServerSpec | None = Field(
        None,
        description=(
            "Have the operator run the endpoint (provider openai): a vLLM or rlaif-train server as a Deployment "
            "and Service, while the stages that ask the labeler run. Instead of endpoint."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.provider != 'openai' || has(self.endpoint) || has(self.server)",
            message="labeler.endpoint is required when labeler.provider is openai (or set labeler.server to have the operator run one)",
            field_path=".endpoint",
            check=lambda s: s.provider != "openai" or s.endpoint is not None or s.server is not None,
        ),
        CelRule(
            rule="!has(self.server) || self.provider == 'openai'",
            message="labeler.server is spoken to over the OpenAI API: set labeler.provider to openai",
            field_path=".server",
            check=lambda s: s.server is None or s.provider == "openai",
        ),
        CelRule(
            rule="!(has(self.server) && has(self.endpoint))",
            message="set labeler.endpoint (a server you run) or labeler.server (one the operator runs), not both",
            field_path=".server",
            check=lambda s: not (s.server is not None and s.endpoint is not None),
        ),
        CelRule(
            rule="self.provider != 'openai' || has(self.model)",
            message="labeler.model (the served model name) is required when labeler.provider is openai",
            field_path=".model",
            check=lambda s: s.provider != "openai" or s.model is not None,
        ),
        CelRule(
            rule="self.provider != 'python' || has(self.callable)",
            message="labeler.callable is required when labeler.provider is python",
            field_path=".callable",
            check=lambda s: s.provider != "python" or s.callable is not None,
        ),
        CelRule(
            rule="!has(self.informationWeight) || self.informationWeight == 0.0 || (self.provider == 'hf' && self.mode == 'pointwise')",
            message="labeler.informationWeight needs labeler.provider hf and labeler.mode pointwise (it reads the labeler model's log-likelihood of the prompt)",
            field_path=".informationWeight",
            check=lambda s: s.information_weight == 0 or (s.provider == "hf" and s.mode == "pointwise"),
        ),
        CelRule(
            rule="self.mode != 'pointwise' || self.principles.size() > 0",
            message="labeler.principles must list at least one yes/no question when labeler.mode is pointwise",
            field_path=".principles",
            check=lambda s: s.mode != "pointwise" or len(s.principles) > 0,
        ),
    )


class RewardModelSpec(ApiModel):
    """The reward model trained on the AI preference labels (or given, for a job without a reward stage)."""

    model: PathStr | None = Field(
        None, description="Base model of the reward model. Default: the policy model."
    )
    path: PathStr | None = Field(
        None,
        description="A reward model trained elsewhere, for RL without a reward stage in this job.",
    )
    lora: LoraSpec | None = Field(
        None, description="Train LoRA adapters (plus the score head) instead of all weights."
    )
    loss: Literal["soft", "bradleyTerry"] = Field(
        "soft",
        description=(
            "soft: the paper's cross-entropy between the AI soft label and the softmax of the two rewards. "
            "bradleyTerry: hard labels (p > 0.5) with the Bradley-Terry log-sigmoid loss. Default soft."
        ),
    )
    epochs: int = Field(2, ge=1, le=1000, description="Passes over the labelled pairs. Default 2.")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW learning rate. Default 1e-5.")
    batch_size: int = Field(
        8, ge=1, le=65536, description="Pairs per optimizer step, across all processes. Default 8."
    )
    max_length: int = Field(
        512,
        ge=8,
        le=131072,
        description="Prompt plus response tokens; longer inputs are truncated. Default 512.",
    )
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of pairs held out to report accuracy. Default 0.1."
    )
    checkpoint_every: int = Field(
        100, ge=1, le=10_000_000, description="Optimizer steps between checkpoints. Default 100."
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute activations in the backward pass instead of keeping them: less memory for "
            "about one more forward pass of compute. Default false."
        ),
    )
    min_held_out_accuracy: float = Field(
        0.5,
        ge=0,
        lt=1,
        description=(
            "Quality gate: the reward stage fails (reason RewardModelBelowGate) unless the lower end of "
            "the 95% Wilson interval of the reward model's accuracy on the held-out pairs is above this. "
            "The default 0.5 demands better than chance, so RL never runs on a reward model that cannot "
            "tell the held-out labels apart. 0 turns the gate off."
        ),
    )


class RLSpec(ApiModel):
    """Policy optimization against the reward, with a KL penalty towards the initial policy."""

    algorithm: Literal["reinforce", "rloo", "grpo", "ppo"] = Field(
        "reinforce",
        description="reinforce (with a baseline, as in the paper), rloo, grpo, or ppo (clipped, with a value head). Default reinforce.",
    )
    reward: Literal["rewardModel", "direct"] = Field(
        "rewardModel",
        description=(
            "rewardModel: score with the trained reward model. direct (d-RLAIF): the labeler scores each "
            "response alone and that score, in [-1, 1], is the reward; no reward model is needed. hf and "
            "openai labelers in pointwise mode: the mean over principles of 2*P(Yes) - 1, with P(Yes) "
            "normalized over Yes and No. hf in pairwise mode: the expected 1-10 score E = sum of i*P(i), "
            "mapped to 2*(E - 1)/9 - 1; when the tokenizer splits '10' into '1' and '0', score 10 gets "
            "P('1')*P('0' after '1'), score 1 gets P('1')*(1 - P('0' after '1')), and the ten are "
            "renormalized. openai in pairwise mode: the same over 1-9 (single tokens), read from the top "
            "log-probabilities. python: the callable's score function, clipped to [-1, 1]. "
            "Default rewardModel."
        ),
    )
    kl_coef: float = Field(
        0.05, ge=0, le=10, description="KL penalty coefficient beta. Default 0.05 (the paper)."
    )
    temperature: float = Field(
        0.9, gt=0, le=5, description="Sampling temperature during RL. Default 0.9 (the paper)."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold. Default 1.0 (off).")
    max_new_tokens: int = Field(
        64, ge=1, le=32768, description="Longest sampled response, in tokens. Default 64."
    )
    steps: int = Field(100, ge=1, le=10_000_000, description="Optimizer steps. Default 100.")
    batch_size: int = Field(
        8, ge=1, le=65536, description="Prompts per step, across all processes. Default 8."
    )
    samples_per_prompt: int = Field(
        2,
        ge=1,
        le=256,
        description="Responses sampled per prompt (k). rloo and grpo need at least 2. Default 2.",
    )
    learning_rate: float = Field(1e-5, gt=0, le=1, description="AdamW learning rate. Default 1e-5.")
    ppo_epochs: int = Field(2, ge=1, le=100, description="PPO passes over each batch. Default 2.")
    clip_range: float = Field(0.2, gt=0, le=1, description="PPO ratio clip range. Default 0.2.")
    checkpoint_every: int = Field(
        20, ge=1, le=10_000_000, description="Steps between checkpoints. Default 20."
    )
    generation: Literal["hf", "vllm"] = Field(
        "hf",
        description=(
            "How rollouts are sampled. hf: the policy itself, in the trainer (a decode loop on the "
            "transformers model). vllm: a vLLM engine colocated in the trainer process on the same "
            "GPU, sent the policy's weights (LoRA folded in) after every update; needs vllm in the "
            "trainer image and a GPU. Default hf."
        ),
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        lt=1,
        description=(
            "With generation vllm: the share of the GPU's memory the colocated engine may take "
            "(weights and KV cache); the policy's training needs the rest. Default 0.3."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute the policy's activations in the backward pass instead of keeping them: less "
            "memory for about one more forward pass of compute. Default false."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!(self.algorithm in ['rloo', 'grpo']) || self.samplesPerPrompt >= 2",
            message="rl.samplesPerPrompt must be at least 2 for rloo and grpo, which compare samples of one prompt",
            field_path=".samplesPerPrompt",
            check=lambda s: s.algorithm not in ("rloo", "grpo") or s.samples_per_prompt >= 2,
        ),
    )


class EvaluationSpec(ApiModel):
    """Win rate of the final policy against the initial policy, judged by a position-debiased AI judge."""

    judge: LabelerSpec | None = Field(None, description="The AI judge. Default: the labeler.")
    samples: int = Field(200, ge=1, le=1_000_000, description="Held-out prompts to judge. Default 200.")
    samples_per_prompt: int = Field(
        4,
        ge=1,
        le=64,
        description=(
            "Responses sampled per held-out prompt from each policy, with common random numbers (sample j "
            "of both policies uses the same seed); the paired tests average them per prompt. Default 4."
        ),
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=32768, description="Response length for evaluation. Default: rl.maxNewTokens."
    )
    policy: PathStr | None = Field(
        None,
        description="The trained policy (model dir or LoRA adapter dir) to evaluate when this job has no rl stage.",
    )


class ResourceSpec(ApiModel):
    """Compute for one stage's pod. Requests equal limits, so stage pods are Guaranteed QoS."""

    gpus: StrictInt | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs per pod; more than one runs the stage under accelerate launch, one process per GPU.",
    )
    cpu: Quantity | None = Field(None, description="CPU, e.g. 8 or 7500m.")
    memory: Quantity | None = Field(None, description="Memory, e.g. 64Gi.")
    ephemeral_storage: Quantity | None = Field(None, description="Local scratch disk, e.g. 50Gi.")
    nodes: StrictInt = Field(
        1,
        ge=1,
        le=128,
        description=(
            "Pods (nodes) the stage spans, each with these resources; only the reward and rl stages can span "
            "more than one. Above 1 the stage runs as a JobSet (jobset.x-k8s.io/v1alpha2, which must be "
            "installed): one launcher per node, its rank from the pod's completion index, the rendezvous at "
            "rank 0's stable hostname. Default 1."
        ),
    )


class LabelResourceSpec(ResourceSpec):
    """Compute for the label stage's pods, and how many of them share the pairs."""

    shards: StrictInt = Field(
        1,
        ge=1,
        le=256,
        description="Pods that label the pairs in parallel, each with these resources. Above 1 the stage runs as an Indexed Job: each pod labels a deterministic shard of the pairs (by pair id, so a retry resumes each shard), and the last shard to finish merges them. Default 1.",
    )


def _one_node(where: str) -> Callable[[object], bool]:
    """The Python twin of a 'resources.<where>.nodes <= 1' rule."""

    def check(resources: object) -> bool:
        spec = getattr(resources, where)
        return spec is None or spec.nodes <= 1

    return check


class StageResources(ApiModel):
    """Resources per stage; each stage's fields override 'default' field by field."""

    default: ResourceSpec = Field(
        default_factory=lambda: ResourceSpec(gpus=1),
        description="Applies to every stage unless overridden. Default: 1 GPU.",
    )
    label: LabelResourceSpec | None = Field(None, description="Overrides for the label stage and its shards.")
    reward: ResourceSpec | None = Field(None, description="Overrides for the reward stage.")
    rl: ResourceSpec | None = Field(None, description="Overrides for the rl stage.")
    evaluate: ResourceSpec | None = Field(None, description="Overrides for the evaluate stage.")

    # The label and evaluate stages run in one pod (label spreads with label.shards instead), and
    # 'default' applies to them too, so only reward and rl may ask for more than one node.
    cel_rules: ClassVar[tuple[CelRule, ...]] = tuple(
        CelRule(
            rule=f"!has(self.{where}) || !has(self.{where}.nodes) || self.{where}.nodes <= 1",
            message=(
                f"resources.{where}.nodes must be 1: {what}; only resources.reward.nodes and "
                "resources.rl.nodes can be above 1"
            ),
            field_path=f".{where}.nodes",
            check=_one_node(where),
        )
        for where, what in (
            ("default", "the default applies to the label and evaluate stages too, which run on one node"),
            ("label", "the label stage runs on one node (resources.label.shards spreads it over pods)"),
            ("evaluate", "the evaluate stage runs on one node"),
        )
    )

    def for_stage(self, stage: str) -> ResourceSpec:
        override = getattr(self, stage)
        merged = self.default.model_dump()
        if override is not None:
            # only the compute fields: the label stage's shards are no resource of one pod
            fields = ResourceSpec.model_fields
            merged.update({k: v for k, v in override.model_dump().items() if v is not None and k in fields})
        if merged.get("gpus") is None:
            merged["gpus"] = 0
        return ResourceSpec.model_validate(merged)

    def shards(self, stage: str) -> int:
        """Pods that share the stage's work: ``label.shards`` for the label stage, else 1."""
        return self.label.shards if stage == "label" and self.label is not None else 1


class PVCRef(ApiModel):
    """An existing PersistentVolumeClaim."""

    claim_name: K8sName = Field(description="Name of a PersistentVolumeClaim in the job's namespace.")


class StorageSpec(ApiModel):
    """The workspace volume that stages share artifacts through. Either an existing claim, or a size for a new one."""

    persistent_volume_claim: PVCRef | None = Field(
        None, description="Use this existing claim (it must allow the stages' pods to mount it)."
    )
    size: Quantity | None = Field(
        None,
        description="Create a claim of this size, owned by the job. Default 20Gi when no claim is given.",
    )
    storage_class_name: ShortStr | None = Field(
        None, description="StorageClass of the created claim. Default: the cluster default."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"],  # type: ignore[arg-type]
        min_length=1,
        max_length=3,
        description="Access modes of the created claim. Default [ReadWriteOnce]; stages run one at a time.",
    )
    sub_path: Annotated[str, Field(max_length=MAX_PATH, pattern=r"^[^/].*$")] | None = Field(
        None, description="Mount this sub-directory of the volume as the workspace root."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!(has(self.persistentVolumeClaim) && has(self.size))",
            message="storage: set either persistentVolumeClaim (an existing claim) or size (a new claim), not both",
            field_path=".size",
            check=lambda s: not (s.persistent_volume_claim is not None and s.size is not None),
        ),
    )


class RunPolicy(ApiModel):
    """How the job is run: retries, deadlines, clean-up, suspension and queueing."""

    backoff_limit: int = Field(
        2, ge=0, le=100, description="Retries of a failed stage pod before the job fails. Default 2."
    )
    backoff_seconds: int = Field(
        10,
        ge=0,
        le=3600,
        description="Delay before the first retry; it doubles each retry, capped at 10 minutes. Default 10.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description=(
            "Fail the job with reason DeadlineExceeded after this long running. Time a stage Job waits in a "
            "Kueue queue does not count: the clock starts at admission, and again at a readmission after a "
            "preemption."
        ),
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it succeeds or fails. Mutable."
    )
    suspend: bool = Field(
        False,
        description="Stop running stage Jobs, keeping artifacts; false resumes at the current stage. Mutable.",
    )
    queue_name: K8sName | None = Field(
        None,
        description=(
            "Kueue LocalQueue; stage Jobs get the kueue.x-k8s.io/queue-name label and are created suspended, "
            "and Kueue decides when they run (phase Queued until then)."
        ),
    )
    queue_timeout_seconds: int | None = Field(
        None,
        ge=1,
        description=(
            "Fail the job with reason QueueTimeoutExceeded when a stage Job waits this long in its Kueue queue "
            "(each wait on its own: before the first admission, or after a preemption). Default: no limit. Mutable."
        ),
    )
    priority_class_name: DnsSubdomain | None = Field(
        None, description="PriorityClass of the stage pods (a DNS subdomain, like every PriorityClass name)."
    )


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: Annotated[str, Field(max_length=317)] | None = Field(
        None, description="Taint key (a label key); empty with operator Exists tolerates everything."
    )
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal. Default Equal.")
    value: LabelValue | None = Field(None, description="Taint value to match with Equal (a label value).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )

    # The API server's own Toleration rules (ValidateTolerations), so a stage Job is not refused.
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=f"!has(self.key) || self.key == '' || ({key_rule(var='self.key')})",
            message="tolerations key must be a Kubernetes label key (an optional DNS-subdomain prefix and '/', then "
            "at most 63 alphanumerics, '-', '_' or '.')",
            field_path=".key",
            check=lambda t: not t.key or qualified_key_ok(t.key),
        ),
        CelRule(
            rule="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            message="tolerations operator must be Exists when the key is empty",
            field_path=".operator",
            check=lambda t: bool(t.key) or t.operator == "Exists",
        ),
        CelRule(
            rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="tolerations value must be empty when the operator is Exists",
            field_path=".value",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerations tolerationSeconds needs effect NoExecute",
            field_path=".tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )


class EnvVar(ApiModel):
    """An environment variable for the stage container (core/v1 EnvVar)."""

    name: EnvName = Field(description="Variable name: printable ASCII characters except '='.")
    value: Text | None = Field(
        None, description="Literal value. Put secrets in valueFrom.secretKeyRef, never here."
    )
    value_from: KubeObject | None = Field(
        None, description="A core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef..."
    )


# The stage pod's own volumes and mount paths (rlaif_operator.builders; a unit test keeps them in
# step). A podTemplate volume with one of these names is dropped (the operator's wins); a mount at
# one of these paths would make the stage Job invalid ("must be unique"), so the schema refuses it.
# (/dev/shm, which the operator mounts for pods with several GPUs, may be the user's: then it is.)
OPERATOR_VOLUMES = ("rlaif-config", "rlaif-workspace", "rlaif-dshm")
OPERATOR_MOUNT_PATHS = ("/etc/rlaif", "/workspace")
# A relative path without '..' components (the API server's validateLocalDescendingPath).
_BACKSTEP_PATTERN = r"(^|/)\.\.(/|$)"
_BACKSTEP_RE = re.compile(_BACKSTEP_PATTERN)
# Every volume source of core/v1 Volume (Kubernetes 1.36); a volume has exactly one.
VOLUME_SOURCES = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
)


class VolumeMount(ApiModel):
    """Where an extra volume is mounted in the stage container (core/v1 VolumeMount)."""

    name: ShortStr = Field(
        description="Name of a volume in podTemplate.volumes (or of one of the operator's, which wins)."
    )
    mount_path: Annotated[str, Field(min_length=1, max_length=MAX_PATH, pattern=r"^/")] = Field(
        description="Absolute path in the container; not /etc/rlaif or /workspace (the operator's). A mount at "
        "/dev/shm replaces the memory-backed one the operator gives pods with more than one GPU."
    )
    read_only: bool | None = Field(None, description="Mount read-only.")
    sub_path: Annotated[str, Field(max_length=MAX_PATH)] | None = Field(
        None, description="Sub-path within the volume: a relative path without '..'."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=f"!has(self.subPath) || (!self.subPath.startsWith('/') && !self.subPath.matches({_cel_string(_BACKSTEP_PATTERN)}))",
            message="volumeMounts subPath must be a relative path without '..'",
            field_path=".subPath",
            check=lambda m: (
                m.sub_path is None or not (m.sub_path.startswith("/") or _BACKSTEP_RE.search(m.sub_path))
            ),
        ),
        CelRule(
            rule=f"!(self.mountPath in {list(OPERATOR_MOUNT_PATHS)})",
            message="volumeMounts mountPath must not be /etc/rlaif or /workspace: the operator mounts the job's "
            "config and the workspace there",
            field_path=".mountPath",
            check=lambda m: m.mount_path not in OPERATOR_MOUNT_PATHS,
        ),
    )


class HostPathVolumeSource(ApiModel):
    """A directory or file on the node (core/v1 HostPathVolumeSource)."""

    path: PathStr = Field(description="Path on the node.")
    type: (
        Literal[
            "",
            "DirectoryOrCreate",
            "Directory",
            "FileOrCreate",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ]
        | None
    ) = Field(None, description="What must exist at the path; empty checks nothing.")


class PersistentVolumeClaimVolumeSource(ApiModel):
    """A PersistentVolumeClaim in the job's namespace (core/v1 PersistentVolumeClaimVolumeSource)."""

    claim_name: DnsSubdomain = Field(description="Name of the claim.")
    read_only: bool | None = Field(None, description="Mount it read-only.")


class Volume(ApiModel):
    """An extra volume of the stage pods (core/v1 Volume): a name and exactly one source. hostPath and
    persistentVolumeClaim are checked here; the other sources are passed through as they are."""

    name: K8sName = Field(description="Volume name: a DNS label, unique in podTemplate.volumes.")
    host_path: HostPathVolumeSource | None = Field(None, description="A path on the node.")
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = Field(
        None, description="A PersistentVolumeClaim in the job's namespace."
    )
    aws_elastic_block_store: KubeObject | None = Field(
        None, description="core/v1 AWSElasticBlockStoreVolumeSource."
    )
    azure_disk: KubeObject | None = Field(None, description="core/v1 AzureDiskVolumeSource.")
    azure_file: KubeObject | None = Field(None, description="core/v1 AzureFileVolumeSource.")
    cephfs: KubeObject | None = Field(None, description="core/v1 CephFSVolumeSource.")
    cinder: KubeObject | None = Field(None, description="core/v1 CinderVolumeSource.")
    config_map: KubeObject | None = Field(None, description="core/v1 ConfigMapVolumeSource.")
    csi: KubeObject | None = Field(None, description="core/v1 CSIVolumeSource.")
    downward_api: KubeObject | None = Field(
        None, alias="downwardAPI", description="core/v1 DownwardAPIVolumeSource."
    )
    empty_dir: KubeObject | None = Field(None, description="core/v1 EmptyDirVolumeSource.")
    ephemeral: KubeObject | None = Field(None, description="core/v1 EphemeralVolumeSource.")
    fc: KubeObject | None = Field(None, description="core/v1 FCVolumeSource.")
    flex_volume: KubeObject | None = Field(None, description="core/v1 FlexVolumeSource.")
    flocker: KubeObject | None = Field(None, description="core/v1 FlockerVolumeSource.")
    gce_persistent_disk: KubeObject | None = Field(None, description="core/v1 GCEPersistentDiskVolumeSource.")
    git_repo: KubeObject | None = Field(None, description="core/v1 GitRepoVolumeSource.")
    glusterfs: KubeObject | None = Field(None, description="core/v1 GlusterfsVolumeSource.")
    image: KubeObject | None = Field(None, description="core/v1 ImageVolumeSource.")
    iscsi: KubeObject | None = Field(None, description="core/v1 ISCSIVolumeSource.")
    nfs: KubeObject | None = Field(None, description="core/v1 NFSVolumeSource.")
    photon_persistent_disk: KubeObject | None = Field(
        None, description="core/v1 PhotonPersistentDiskVolumeSource."
    )
    portworx_volume: KubeObject | None = Field(None, description="core/v1 PortworxVolumeSource.")
    projected: KubeObject | None = Field(None, description="core/v1 ProjectedVolumeSource.")
    quobyte: KubeObject | None = Field(None, description="core/v1 QuobyteVolumeSource.")
    rbd: KubeObject | None = Field(None, description="core/v1 RBDVolumeSource.")
    scale_io: KubeObject | None = Field(None, alias="scaleIO", description="core/v1 ScaleIOVolumeSource.")
    secret: KubeObject | None = Field(None, description="core/v1 SecretVolumeSource.")
    storageos: KubeObject | None = Field(None, description="core/v1 StorageOSVolumeSource.")
    vsphere_volume: KubeObject | None = Field(None, description="core/v1 VsphereVirtualDiskVolumeSource.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="[" + ", ".join(f"has(self.{s})" for s in VOLUME_SOURCES) + "].filter(x, x).size() == 1",
            message="volumes need exactly one volume source (emptyDir, hostPath, persistentVolumeClaim, secret, ...)",
            check=lambda v: len(set(v.to_wire()) - {"name"}) == 1,
        ),
    )


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: K8sName = Field(description="Name of the referenced object.")


class PodTemplateOverrides(ApiModel):
    """Additions to every stage pod. The operator's own labels, security context and workspace mount always win."""

    labels: LabelMap | None = Field(
        None, description="Extra pod labels: Kubernetes label keys and values (63 characters at most)."
    )
    annotations: AnnotationMap | None = Field(
        None, description="Extra pod annotations: qualified-name keys, at most 32 values of 4096 characters."
    )
    node_selector: LabelMap | None = Field(None, description="Node selector, e.g. a GPU product label.")
    tolerations: list[Toleration] | None = Field(
        None, max_length=MAX_LIST, description="Tolerations, e.g. for tainted GPU nodes."
    )
    affinity: KubeObject | None = Field(None, description="A core/v1 Affinity.")
    service_account_name: K8sName | None = Field(
        None, description="ServiceAccount of the stage pods. Default: the operator's trainer ServiceAccount."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, max_length=MAX_LIST, description="Secrets for pulling the trainer image."
    )
    env: list[EnvVar] | None = Field(None, max_length=MAX_LIST, description="Extra environment variables.")
    volumes: list[Volume] | None = Field(
        None,
        max_length=MAX_LIST,
        description="Extra core/v1 Volumes, each with a unique name and one source. One named like the operator's "
        "(rlaif-config, rlaif-workspace, rlaif-dshm) is dropped.",
    )
    volume_mounts: list[VolumeMount] | None = Field(
        None, max_length=MAX_LIST, description="Mounts of the extra volumes, each at its own path."
    )

    # What the API server checks across a pod's volumes and mounts (ValidateVolumes,
    # ValidateVolumeMounts), so that a stage Job is not refused for it.
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
            message="volumes names must be unique",
            field_path=".volumes",
            check=lambda t: len({v.name for v in t.volumes or []}) == len(t.volumes or []),
        ),
        CelRule(
            rule=f"!has(self.volumeMounts) || self.volumeMounts.all(m, m.name in {list(OPERATOR_VOLUMES)} || "
            "(has(self.volumes) && self.volumes.exists(v, v.name == m.name)))",
            message="volumeMounts name must be the name of a volume in podTemplate.volumes",
            field_path=".volumeMounts",
            check=lambda t: all(
                m.name in OPERATOR_VOLUMES or any(v.name == m.name for v in t.volumes or [])
                for m in t.volume_mounts or []
            ),
        ),
        CelRule(
            rule="!has(self.volumeMounts) || self.volumeMounts.all(m, self.volumeMounts.exists_one(n, n.mountPath == m.mountPath))",
            message="volumeMounts mountPath must be unique",
            field_path=".volumeMounts",
            check=lambda t: len({m.mount_path for m in t.volume_mounts or []}) == len(t.volume_mounts or []),
        ),
    )


def _has_stage(spec: RLAIFJobSpec, stage: str) -> bool:
    return stage in spec.stages


def _rl_has_reward_source(s: RLAIFJobSpec) -> bool:
    if "rl" not in s.stages or s.rl.reward != "rewardModel":
        return True
    return "reward" in s.stages or (s.reward_model is not None and s.reward_model.path is not None)


class RLAIFJobSpec(ApiModel):
    """Desired state of an RLAIF run: the stages to run, their models and data, and how to run them."""

    policy: PolicySpec = Field(description="The language model being aligned.")
    dataset: DatasetSpec = Field(description="Prompts and optional given pairs or labels.")
    labeler: LabelerSpec | None = Field(
        None, description="The AI labeler. Required by the label stage and by rl.reward: direct."
    )
    reward_model: RewardModelSpec = Field(default_factory=RewardModelSpec, description="The reward model.")
    rl: RLSpec = Field(default_factory=RLSpec, description="Policy optimization.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Final evaluation.")
    stages: list[Stage] = Field(
        default_factory=lambda: list(STAGE_ORDER),  # type: ignore[arg-type]
        min_length=1,
        max_length=4,
        description="Stages to run, a subsequence of [label, reward, rl, evaluate] in that order. Default: all four.",
    )
    image: ImageRef | None = Field(
        None,
        description=(
            "Trainer container image, a reference such as registry.example/rlaif-trainer:0.1.0 or one with "
            "@sha256:<digest>. Default: the operator's configured trainer image."
        ),
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Random seed for sampling, shuffling and initialization. Default 0.",
    )
    resources: StageResources = Field(default_factory=StageResources, description="Compute per stage.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="The shared workspace volume.")
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retries, deadlines, suspension and queueing."
    )
    pod_template: PodTemplateOverrides | None = Field(None, description="Additions to every stage pod.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.stages == ['label', 'reward', 'rl', 'evaluate'].filter(s, s in self.stages)",
            message="stages must be a non-empty subsequence of [label, reward, rl, evaluate], in that order and without repeats",
            field_path=".stages",
            check=lambda s: s.stages == [st for st in STAGE_ORDER if st in s.stages],
        ),
        CelRule(
            rule="!('label' in self.stages) || has(self.labeler)",
            message="labeler is required when stages include label",
            field_path=".labeler",
            check=lambda s: not _has_stage(s, "label") or s.labeler is not None,
        ),
        CelRule(
            rule="!('rl' in self.stages) || self.rl.reward != 'direct' || has(self.labeler)",
            message="labeler is required when rl.reward is direct (d-RLAIF scores responses with the labeler)",
            field_path=".labeler",
            check=lambda s: not _has_stage(s, "rl") or s.rl.reward != "direct" or s.labeler is not None,
        ),
        CelRule(
            rule=(
                "!('rl' in self.stages) || self.rl.reward != 'rewardModel' || 'reward' in self.stages"
                " || has(self.rewardModel.path)"
            ),
            message="rl.reward rewardModel needs the reward stage in stages, or a trained model in rewardModel.path",
            field_path=".rl.reward",
            check=_rl_has_reward_source,
        ),
        CelRule(
            rule="!('reward' in self.stages) || 'label' in self.stages || has(self.dataset.labels)",
            message="the reward stage needs labels: include the label stage, or give dataset.labels",
            field_path=".dataset.labels",
            check=lambda s: (
                not _has_stage(s, "reward") or _has_stage(s, "label") or s.dataset.labels is not None
            ),
        ),
        CelRule(
            rule="!has(self.evaluation) || !has(self.evaluation.judge) || !has(self.evaluation.judge.server)",
            message=(
                "evaluation.judge.server: the operator serves only the labeler; leave evaluation.judge unset to "
                "judge with the served labeler, or give the judge an endpoint"
            ),
            field_path=".evaluation.judge.server",
            # The resolved spec's judge is a copy of the labeler (resolve_spec), server included; CEL
            # cannot compare the two (different schema types), so only here is the copy let through.
            check=lambda s: (
                s.evaluation.judge is None
                or s.evaluation.judge.server is None
                or s.evaluation.judge == s.labeler
            ),
        ),
        CelRule(
            rule="!('evaluate' in self.stages) || has(self.labeler) || has(self.evaluation.judge)",
            message="the evaluate stage needs a judge: set evaluation.judge or labeler",
            field_path=".evaluation.judge",
            check=lambda s: (
                not _has_stage(s, "evaluate") or s.labeler is not None or s.evaluation.judge is not None
            ),
        ),
        CelRule(
            rule="!('evaluate' in self.stages) || 'rl' in self.stages || has(self.evaluation.policy)",
            message="the evaluate stage needs a policy to evaluate: include the rl stage, or set evaluation.policy",
            field_path=".evaluation.policy",
            check=lambda s: (
                not _has_stage(s, "evaluate") or _has_stage(s, "rl") or s.evaluation.policy is not None
            ),
        ),
    )

    def judge(self) -> LabelerSpec | None:
        return self.evaluation.judge or self.labeler


class ObjectMeta(BaseModel):
    """The subset of metadata the trainer needs; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field("local", description="Name of the job.")
    namespace: str = Field("default", description="Namespace of the job.")


class RLAIFJob(ApiModel):
    """RLAIFJob aligns a language model with Reinforcement Learning from AI Feedback (Lee et al. 2023): AI preference labeling, reward-model training, RL policy optimization, then evaluation, one batch/v1 Job per stage."""

    api_version: Literal["rlaif.dev/v1alpha1"] = Field(
        "rlaif.dev/v1alpha1", description="rlaif.dev/v1alpha1."
    )
    kind: Literal["RLAIFJob"] = Field("RLAIFJob", description="RLAIFJob.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: RLAIFJobSpec = Field(description="Desired state of the run.")
    status: RLAIFJobStatus | None = Field(None, description="Observed state, written by the operator.")


def load_job(path: str | Path) -> RLAIFJob:
    """Read and validate an RLAIFJob manifest (YAML). Raises pydantic.ValidationError naming the field."""
    import yaml

    with open(path) as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an RLAIFJob mapping, got {type(document).__name__}")
    metadata = document.get("metadata") or {}
    document["metadata"] = {
        k: v for k, v in metadata.items() if k in ("name", "namespace", "labels", "annotations")
    }
    document.pop("status", None)
    return RLAIFJob.model_validate(document)
