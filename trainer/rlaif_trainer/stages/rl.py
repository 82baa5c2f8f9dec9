"""The ``rl`` stage: the RL loop (:mod:`rlaif_trainer.rl.loop`) with the reward source the job names."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from rlaif_api.summaries import RLSummary
from rlaif_trainer.data.prompts import split_prompts
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.rl.config import LoraSettings, RLLoopConfig
from rlaif_trainer.rl.loop import RewardFn, RLTrainer, _dist
from rlaif_trainer.stages.common import device as stage_device
from rlaif_trainer.stages.common import resumed_summary, shares_policy_weights

log = logging.getLogger(__name__)


def loop_config(config) -> RLLoopConfig:
    """The RL loop's settings from the stage's resolved config (the loop does not read the spec)."""
    spec = config.spec
    rl, policy = spec.rl, spec.policy
    lora = policy.lora
    return RLLoopConfig(
        policy_model=policy.model,
        train_prompts=tuple(split_prompts(spec)[0]),
        output_dir=Path(config.artifacts.policy),
        seed=int(config.seed),
        algorithm=rl.algorithm,
        reward=rl.reward,
        steps=rl.steps,
        batch_size=rl.batch_size,
        samples_per_prompt=rl.samples_per_prompt,
        kl_coef=rl.kl_coef,
        learning_rate=rl.learning_rate,
        temperature=rl.temperature,
        top_p=rl.top_p,
        max_new_tokens=rl.max_new_tokens,
        max_prompt_length=policy.max_prompt_length,
        ppo_epochs=rl.ppo_epochs,
        clip_range=rl.clip_range,
        checkpoint_every=rl.checkpoint_every,
        gradient_checkpointing=rl.gradient_checkpointing,
        generation=rl.generation,
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
        lora=None
        if lora is None
        else LoraSettings(
            r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules)
        ),
        prompts_source=str(spec.dataset.prompts),
    )


def build_reward_fn(config, policy_model=None, tokenizer=None, device=None) -> RewardFn:
    """The reward for ``(prompts, responses)``: the trained reward model, or the labeler's direct score.

    With ``direct`` and an ``hf`` labeler on the policy's own base model, the labeler reuses the
    policy's weights with the adapters disabled (the frozen initial model), so no second copy is loaded.
    """
    spec = config.spec
    if spec.rl.reward == "direct":
        from rlaif_trainer.feedback.build import build_labeler

        lab = spec.labeler
        if lab is None:
            raise BadInputError("rl.reward is direct but the job has no labeler")
        shares = policy_model is not None and shares_policy_weights(lab, spec)
        if shares:
            labeler = build_labeler(lab, model=policy_model, tokenizer=tokenizer)

            def direct_shared(prompts: list[str], responses: list[str]) -> list[float]:
                with policy_model.disable_adapter():
                    return [float(s) for s in labeler.score(prompts, responses)]

            return direct_shared
        labeler = build_labeler(lab)
        return lambda prompts, responses: [float(s) for s in labeler.score(prompts, responses)]

    from rlaif_trainer.reward_model.scorer import load_reward_scorer

    path = spec.reward_model.path or config.artifacts.reward_model
    if not Path(path).exists():
        raise BadInputError(f"reward model not found at {path}: run the reward stage or set rewardModel.path")
    return load_reward_scorer(path, device=device)


def _finish_atomically(trainer: RLTrainer, final_dir: Path, summary: RLSummary) -> None:
    """Final files into the work dir (checkpoints dropped), rename it to the artifact dir, then DONE."""
    from rlaif_trainer.data.artifacts import finalize_dir

    work = trainer.work_dir
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    trainer.save_final(work, summary.to_message())  # summary.json: the same JSON as DONE
    finalize_dir(work, final_dir, summary)


def _init_distributed() -> None:
    """Join the process group when launched by ``accelerate launch`` / torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _dist():
        try:
            from accelerate import PartialState

            PartialState()  # initialises torch.distributed (gloo on CPU, nccl on GPU)
        except Exception:  # pragma: no cover - accelerate is a trainer dependency
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)


def run(config, *, progress: bool = True) -> RLSummary:
    """The ``rl`` stage: train, checkpoint/resume, and write ``<policy>/`` atomically with a DONE marker."""

    final_dir = Path(config.artifacts.policy)
    if (done := resumed_summary(final_dir, RLSummary)) is not None:
        return done
    _init_distributed()
    t0 = time.perf_counter()
    trainer = RLTrainer(
        loop_config(config),
        reward_factory=functools.partial(build_reward_fn, config),
        progress=progress,
        device=stage_device(),
    )
    trainer.train()
    in_sync = trainer.replicas_in_sync()
    summary = RLSummary.model_validate(
        {**trainer.summary(time.perf_counter() - t0), "replicas_in_sync": in_sync}
    )
    if trainer.is_main:
        _finish_atomically(trainer, final_dir, summary)
    if trainer.world > 1:
        torch.distributed.barrier()
    return summary
