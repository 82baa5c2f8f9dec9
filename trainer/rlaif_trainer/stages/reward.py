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
A seeded shuffle holds out ``evalFraction`` of the pairs (at least 50 when there are 100 or more,
else half); accuracy is the share of held-out pairs (pairs labelled exactly 0.5 excluded) where
``sign(r_a − r_b)`` agrees with ``p_a > 0.5``, an exact tie of the rewards counting half. The score
head starts at zero, and the quality gate (below) fails the stage,
saving nothing, when the accuracy's 95% Wilson interval does not clear
``rewardModel.minHeldOutAccuracy``.

Batching: dynamic padding to the longest sequence of each batch, and length-grouped batches
(shuffle, sort by length within windows of 50 batches, cut, shuffle the batches), seeded per epoch.

Data parallel: under ``accelerate launch`` every process computes the same global batch order and
takes every ``world_size``-th pair of each global batch; each process's loss is its sum divided by
the global batch size times the world size, so DDP's gradient mean equals the single-process mean
over the same global batch (tested with two CPU processes on gloo, launched with
``accelerate launch --multi_gpu --num_processes 2``: torchrun underneath; without CUDA the
processes join a gloo group; and across two "nodes" with the pod's own launch command,
tests/unit/trainer/reward_model/test_reward_multinode.py).

Checkpoints: every ``checkpointEvery`` optimizer steps, rank 0 alone writes the trainable weights,
the optimizer, every rank's RNG state and the step counter into ``<reward_model>.partial/checkpoint/``
(atomically). A restarted stage, on every rank, loads the checkpoint rank 0 found and skips the
steps already done. ``metrics.jsonl`` holds each step's loss. The finished model (LoRA merged) is
saved in HF format to ``<artifacts.reward_model>/`` with ``reward_meta.json`` and ``DONE``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rlaif_api.status import Reason
from rlaif_api.summaries import RewardSummary
from rlaif_trainer.data.artifacts import LABELS_FILE, finalize_dir, is_done, partial_dir
from rlaif_trainer.data.records import read_pairs
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.winrate import wilson_interval
from rlaif_trainer.reward_model.batching import split_pairs
from rlaif_trainer.reward_model.training import train_reward_model, zero_score_head
from rlaif_trainer.stages.common import resumed_summary

log = logging.getLogger(__name__)

__all__ = ["RewardModelGateError", "gate_check", "run"]


# ---------------------------------------------------------------------------------------------- gate
# RL must not run on a reward model at chance. After training, the stage measures the accuracy on the
# held-out pairs and its 95% Wilson interval; unless the interval's lower end is above
# rewardModel.minHeldOutAccuracy (default 0.5), the stage fails with RewardModelGateError, a
# bad-input failure (training again on the same labels cannot fix it) whose reason the operator
# shows in the Failed condition and event. The score head starts at zero (zero_score_head).


class RewardModelGateError(BadInputError):
    """The trained reward model is not measurably better than chance on its held-out pairs.

    ``summary`` carries the measured figures into the termination message next to the error and
    the reason.
    """

    reason = Reason.REWARD_MODEL_BELOW_GATE.value

    def __init__(self, message: str, summary: RewardSummary) -> None:
        super().__init__(message)
        self.summary = summary


def gate_check(accuracy: float | None, n: int, threshold: float) -> dict[str, Any]:
    """The accuracy's 95% Wilson interval over ``n`` held-out pairs, and whether its lower end is
    above ``threshold`` (``threshold`` 0 turns the gate off)."""
    if accuracy is None or n <= 0 or math.isnan(accuracy):
        lo, hi = 0.0, 1.0
    else:
        lo, hi = wilson_interval(accuracy * n, n)
    return {
        "accuracy_ci_low": round(lo, 4),
        "accuracy_ci_high": round(hi, 4),
        "min_held_out_accuracy": threshold,
        "gate_passed": threshold <= 0 or lo > threshold,
    }


def _load_labels(config: Any) -> list[dict[str, Any]]:
    spec, art = config.spec, config.artifacts
    if is_done(art.labels):
        return read_pairs(Path(art.labels) / LABELS_FILE, require_label=True, what="labels file")
    if spec.dataset.labels:
        return read_pairs(spec.dataset.labels, require_label=True, what="labels file")
    raise BadInputError(
        f"no labels: {art.labels} is not complete (no DONE marker) and dataset.labels is not set"
    )


def run(config: Any, *, progress: bool = True) -> RewardSummary:
    """Run the reward stage; returns the summary (also stored in ``<reward_model>/DONE``)."""
    import torch
    from accelerate import Accelerator

    from rlaif_trainer.modeling.loading import load_reward_model

    spec, art = config.spec, config.artifacts
    if (done := resumed_summary(art.reward_model, RewardSummary)) is not None:
        return done
    rm = spec.reward_model
    pairs = _load_labels(config)
    train, held = split_pairs(pairs, rm.eval_fraction, config.seed)

    use_cuda = torch.cuda.is_available()
    acc = Accelerator(
        cpu=not use_cuda, mixed_precision="bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
    )
    torch.manual_seed(config.seed)  # LoRA's initialisation (the score head starts at zero)
    model, tok = load_reward_model(
        rm.model or spec.policy.model, lora=rm.lora, device=acc.device, dtype=torch.float32
    )
    zero_score_head(model)
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
    summary = RewardSummary(
        accuracy=metrics["accuracy"],
        loss=metrics["loss"],
        eval_loss=metrics["eval_loss"],
        samples_per_s=metrics["samples_per_s"],
        train_pairs=metrics["train_pairs"],
        eval_pairs=metrics["eval_pairs"],
        steps=metrics["steps"],
        resumed_from_step=metrics["resumed_from_step"],
        processes=metrics["processes"],
        loss_type=rm.loss,
        lora=rm.lora is not None,
        **gate_check(metrics["accuracy"], metrics["eval_pairs"], rm.min_held_out_accuracy),
    )
    if not summary.gate_passed:
        # Nothing is saved: a failed gate must not leave a reward model that a later rl stage uses.
        if acc.is_main_process:
            shutil.rmtree(work / "checkpoint", ignore_errors=True)
        acc.wait_for_everyone()
        acc_text = "none" if summary.accuracy is None else f"{summary.accuracy:.3f}"
        raise RewardModelGateError(
            f"reward model held-out accuracy {acc_text} on {summary.eval_pairs} pairs, 95% interval "
            f"[{summary.accuracy_ci_low:.3f}, {summary.accuracy_ci_high:.3f}]: the lower end is not above "
            f"rewardModel.minHeldOutAccuracy={rm.min_held_out_accuracy}, so RL would optimise noise. The labels "
            "are too weak for a reward model: label more pairs (dataset.maxPrompts), choose principles or a "
            "labeler that score well on dataset.calibrationPairs (`rlaif-train calibrate`), or use "
            "rl.reward: direct (d-RLAIF)",
            summary,
        )
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
                    "accuracy": summary.accuracy,
                }
            )
        )
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
        finalize_dir(work, art.reward_model, summary)
    acc.wait_for_everyone()
    return summary
