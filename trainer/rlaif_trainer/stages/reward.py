"""The ``reward`` stage: a reward model trained on the AI soft labels (Lee et al. 2023, §2.2).

Model: ``AutoModelForSequenceClassification`` with one output (the reward), from
``rewardModel.model`` (default: the policy model), fully fine-tuned or with LoRA adapters (the
score head is trained too). Input text: the prompt as a user turn and the response as the
assistant turn, through the tokenizer's chat template (``prompt\\nresponse<eos>`` without one),
truncated to the last ``rewardModel.maxLength`` tokens. The reward is read at the last token.

Loss (``rewardModel.loss``):

* ``soft`` (the paper): cross-entropy between the soft label ``p_a`` and the softmax of the two
  rewards: ``−[p_a·log σ(r_a − r_b) + (1 − p_a)·log σ(r_b − r_a)]``;
* ``bradleyTerry``: hard labels (``p_a > 0.5`` means a wins; exact ties are dropped) with
  ``−log σ(r_win − r_lose)``.

Data: ``<artifacts.labels>/labels.jsonl`` (see :mod:`rlaif_trainer.stages.label`) or ``dataset.labels``.
A seeded shuffle holds out ``evalFraction`` of the pairs; accuracy is the share of held-out pairs
(ties excluded) where ``sign(r_a − r_b)`` agrees with ``p_a > 0.5``.

Batching: dynamic padding to the longest sequence of each batch, and length-grouped batches
(shuffle, sort by length within windows of 50 batches, cut, shuffle the batches), seeded per epoch.

Data parallel: under ``accelerate launch`` every process computes the same global batch order and
takes every ``world_size``-th pair of each global batch; each process's loss is its sum divided by
the global batch size times the world size, so DDP's gradient mean equals the single-process mean
over the same global batch (tested with two CPU processes on gloo, launched with
``accelerate launch --multi_gpu --num_processes 2``: torchrun underneath; without CUDA the
processes join a gloo group).

Checkpoints: every ``checkpointEvery`` optimizer steps, ``accelerate``'s ``save_state`` (model,
optimizer, RNG) into ``<reward_model>.partial/checkpoint/``, plus the step counter. A restarted
stage loads it and skips the steps already done. The finished model (LoRA merged) is saved in HF
format to ``<artifacts.reward_model>/`` with ``reward_meta.json`` and ``DONE``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rlaif_trainer.data.artifacts import LABELS_FILE, finalize_dir, is_done, partial_dir
from rlaif_trainer.data.records import read_pairs
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.reward_model.batching import split_pairs
from rlaif_trainer.reward_model.training import train_reward_model
from rlaif_trainer.stages.common import resumed_summary

log = logging.getLogger(__name__)

__all__ = ["run"]


# ---------------------------------------------------------------------------------------------- losses


# ---------------------------------------------------------------------------------------------- data


# ---------------------------------------------------------------------------------------------- scoring


# ---------------------------------------------------------------------------------------------- training


# ---------------------------------------------------------------------------------------------- stage


def _load_labels(config: Any) -> list[dict[str, Any]]:
    spec, art = config.spec, config.artifacts
    if is_done(art.labels):
        return read_pairs(Path(art.labels) / LABELS_FILE, require_label=True, what="labels file")
    if spec.dataset.labels:
        return read_pairs(spec.dataset.labels, require_label=True, what="labels file")
    raise BadInputError(
        f"no labels: {art.labels} is not complete (no DONE marker) and dataset.labels is not set"
    )


def run(config: Any, *, progress: bool = True) -> dict[str, Any]:
    """Run the reward stage; returns the summary (also stored in ``<reward_model>/DONE``)."""
    import torch
    from accelerate import Accelerator

    from rlaif_trainer.modeling.loading import load_reward_model

    spec, art = config.spec, config.artifacts
    if (done := resumed_summary(art.reward_model)) is not None:
        return done
    rm = spec.reward_model
    pairs = _load_labels(config)
    train, held = split_pairs(pairs, rm.eval_fraction, config.seed)

    use_cuda = torch.cuda.is_available()
    acc = Accelerator(
        cpu=not use_cuda, mixed_precision="bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
    )
    torch.manual_seed(config.seed)  # the score head's initialisation
    model, tok = load_reward_model(
        rm.model or spec.policy.model, lora=rm.lora, device=acc.device, dtype=torch.float32
    )
    work = partial_dir(art.reward_model)
    if acc.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    metrics = train_reward_model(
        model,
        tok,
        train,
        held,
        loss=rm.loss,
        epochs=rm.epochs,
        learning_rate=rm.learning_rate,
        batch_size=rm.batch_size,
        max_length=rm.max_length,
        seed=config.seed,
        checkpoint_dir=work,
        checkpoint_every=rm.checkpoint_every,
        gradient_checkpointing=rm.gradient_checkpointing,
        accelerator=acc,
        progress=progress,
    )
    trained = metrics.pop("model")
    summary: dict[str, Any] = {
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "eval_loss": metrics["eval_loss"],
        "samples_per_s": metrics["samples_per_s"],
        "train_pairs": metrics["train_pairs"],
        "eval_pairs": metrics["eval_pairs"],
        "steps": metrics["steps"],
        "resumed_from_step": metrics["resumed_from_step"],
        "processes": metrics["processes"],
        "loss_type": rm.loss,
        "lora": rm.lora is not None,
    }
    if acc.is_main_process:
        if rm.lora is not None and hasattr(trained, "merge_and_unload"):
            trained = trained.merge_and_unload()
        out = work / "model.tmp"
        if out.exists():
            shutil.rmtree(out)
        trained.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        for f in out.iterdir():
            os.replace(f, work / f.name)
        out.rmdir()
        (work / "reward_meta.json").write_text(
            json.dumps(
                {
                    "base_model": rm.model or spec.policy.model,
                    "max_length": rm.max_length,
                    "loss": rm.loss,
                    "accuracy": summary["accuracy"],
                }
            )
        )
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
        finalize_dir(work, art.reward_model, summary)
    acc.wait_for_everyone()
    return summary
