"""Reward-model training: data-parallel with accelerate, checkpointed and resumable.

Data parallel (``accelerate launch`` on several GPUs or nodes): every process computes the same
global batches and takes every ``world``-th pair of each; its loss is its sum over the global batch
size times the world size, so DDP's mean gradient is the one-process gradient of the same batch.
Per-step losses and eval metrics then match one process up to floating-point summation order
(tested across two gloo "nodes"), as long as the forward is deterministic: dropout draws its masks
from each process's own RNG.

Checkpoints have one writer: rank 0 writes the trainable weights, the optimizer and every rank's
RNG state (gathered) into ``checkpoint/`` atomically; on a restart rank 0 reads the step and tells
the other ranks, and every rank loads that checkpoint, so all resume from the same step. (accelerate's
``save_state`` had each rank write its own RNG file, and each rank decide alone whether to resume.)
``metrics.jsonl`` beside it gets one line per step from rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.data.artifacts import trim_step_log
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.performance import enable_gradient_checkpointing
from rlaif_trainer.reward_model.batching import encode_response, length_grouped_batches
from rlaif_trainer.reward_model.losses import pair_loss, soft_label_loss
from rlaif_trainer.reward_model.scorer import _rewards

log = logging.getLogger(__name__)

#: The checkpoint's state file and its commit marker (written last, inside the atomic rename).
CHECKPOINT_STATE, CHECKPOINT_MARKER = "state.pt", "trainer_state.json"
#: One JSON line per optimizer step (rank 0), in the checkpoint directory's parent: the work dir.
METRICS_FILE = "metrics.jsonl"


def _evaluate(
    model: Any,
    data: list[tuple[list[int], list[int], float]],
    pad: int,
    device: Any,
    loss_fn: Any,
    batch_size: int,
    accelerator: Any,
) -> dict[str, float]:
    import torch

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = data[rank::world]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    counted = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    model.eval()
    with torch.no_grad():
        for s in range(0, len(mine), batch_size):
            chunk = mine[s : s + batch_size]
            r = _rewards(model, [c[0] for c in chunk] + [c[1] for c in chunk], pad, device)
            ra, rb = r[: len(chunk)], r[len(chunk) :]
            p = torch.tensor([c[2] for c in chunk], device=device, dtype=torch.float32)
            loss_sum += soft_label_loss(ra, rb, p).sum()
            decided = p != 0.5
            # An exact tie of the two rewards picks neither response: half right, as a coin would be
            # (``ra > rb`` alone would count it as preferring B). A zero-initialised score head ties
            # every pair, so this is what keeps an untrained model at 0.5 rather than at P(B wins).
            hit = torch.where(ra == rb, torch.full_like(ra, 0.5), ((ra > rb) == (p > 0.5)).float())
            correct += (hit * decided).sum()
            counted += decided.sum()
            n += len(chunk)
    model.train()
    tot = accelerator.reduce(torch.stack([loss_sum, correct, counted, n]), reduction="sum")
    t_loss, t_correct, t_counted, t_n = (float(x) for x in tot)
    return {
        "eval_loss": t_loss / t_n if t_n else float("nan"),
        "accuracy": t_correct / t_counted if t_counted else float("nan"),
        "eval_pairs": int(t_n),
    }


def _optimizer_step(
    model: Any,
    opt: Any,
    acc: Any,
    loss_fn: Any,
    mine: Sequence[tuple[list[int], list[int], float]],
    per_process: float,
    pad: int,
    device: Any,
) -> Any:
    """One optimizer step on this process's pairs; returns their summed loss, detached.

    A function of its own so that the step's tensors die when it returns rather than living
    through the next forward pass, and the gradients are freed right after the update rather than
    before the next backward: on the embedded model that lowers peak RSS by about 1 GiB.
    """
    import torch

    r = _rewards(model, [m[0] for m in mine] + [m[1] for m in mine], pad, device)
    p = torch.tensor([m[2] for m in mine], device=device, dtype=torch.float32)
    per = loss_fn(r[: len(mine)], r[len(mine) :], p)
    acc.backward(per.sum() / per_process)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return per.detach().sum()


def train_reward_model(
    model: Any,
    tokenizer: Any,
    train: Sequence[dict[str, Any]],
    evaluation: Sequence[dict[str, Any]] = (),
    *,
    loss: str = "soft",
    epochs: int = 1,
    learning_rate: float = 1e-5,
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    max_steps: int | None = None,
    accelerator: Any = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Train ``model`` (a one-output sequence classifier) on labelled pairs; returns metrics.

    ``train``/``evaluation`` are ``{"prompt", "response_a", "response_b", "p_a"}`` records.
    ``batch_size`` is the global number of pairs per optimizer step across processes.
    ``on_step(step, loss)`` is called on every process with the global mean loss of each step.
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    if batch_size < world:
        raise BadInputError(f"rewardModel.batchSize={batch_size} is smaller than the {world} processes")
    loss_fn = pair_loss(loss)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def enc(rows: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int], float]]:
        return [
            (
                encode_response(tokenizer, r["prompt"], r["response_a"], max_length),
                encode_response(tokenizer, r["prompt"], r["response_b"], max_length),
                float(r["p_a"]),
            )
            for r in rows
        ]

    rows = [r for r in train if not (loss == "bradleyTerry" and float(r["p_a"]) == 0.5)]
    data = enc(rows)
    eval_data = enc(evaluation)
    if not data:
        raise BadInputError("no training pairs (after dropping exact ties for bradleyTerry)")
    lengths = [max(len(a), len(b)) for a, b, _ in data]  # both are padded to the longer one
    tokens = [len(a) + len(b) for a, b, _ in data]
    steps_per_epoch = len(length_grouped_batches(lengths, batch_size, seed=seed, epoch=0, min_batch=world))
    total_steps = steps_per_epoch * epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    if gradient_checkpointing:  # the model trains in training mode, where HF's layers checkpoint
        enable_gradient_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused kernel avoids foreach's parameter-sized temporaries (peak memory)
        opt = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    device = acc.device
    model.train()

    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    step = _load_checkpoint(acc, model, opt, ckpt) if ckpt is not None else 0
    resumed_from = step
    metrics_path = Path(checkpoint_dir) / METRICS_FILE if checkpoint_dir is not None else None
    if metrics_path is not None and acc.is_main_process:
        trim_step_log(metrics_path, step)

    losses: list[float] = []
    pairs_done = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="reward",
        unit="step",
        disable=not (progress and acc.is_main_process),
    )
    global_step = 0
    if acc.is_main_process:
        prom.record_progress(step / max(total_steps, 1))
    for epoch in range(epochs):
        batches = length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch, min_batch=world)
        for batch in batches:
            if global_step >= total_steps:
                break
            if global_step < step:
                global_step += 1
                continue
            t_step = time.perf_counter()
            local_sum = _optimizer_step(
                model,
                opt,
                acc,
                loss_fn,
                [data[i] for i in batch[rank::world]],
                len(batch) / world,
                pad,
                device,
            )
            glob = acc.reduce(local_sum, reduction="sum") / len(batch)
            lv = float(glob)
            losses.append(lv)
            pairs_done += len(batch)
            global_step += 1
            step = global_step
            if on_step is not None:
                on_step(step, lv)
            if acc.is_main_process:
                seconds = time.perf_counter() - t_step
                prom.record_step(
                    samples=len(batch),
                    seconds=seconds,
                    tokens=sum(tokens[i] for i in batch),
                    loss=lv,
                    progress=step / total_steps,
                )
                if metrics_path is not None:
                    row = {"step": step, "loss": lv, "pairs": len(batch), "step_time_s": seconds}
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4f}")
            if ckpt is not None and (step % checkpoint_every == 0) and step < total_steps:
                _save_checkpoint(acc, model, opt, ckpt, step)
    bar.close()
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "loss": round(sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]), 6) if losses else None,
        "steps": step,
        "resumed_from_step": resumed_from,
        "train_pairs": len(data),
        "samples_per_s": round(pairs_done / seconds, 3) if seconds > 0 and pairs_done else None,
        "processes": world,
    }
    if eval_data:
        ev = _evaluate(model, eval_data, pad, device, loss_fn, max(1, batch_size // world), acc)
        metrics.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in ev.items()})
    else:
        metrics.update({"accuracy": None, "eval_loss": None, "eval_pairs": 0})
    metrics["model"] = acc.unwrap_model(model)
    return metrics


def _rng_state() -> dict[str, Any]:
    import torch

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _gather(obj: Any, world: int) -> list[Any]:
    import torch

    if world <= 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch

    if world <= 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _save_checkpoint(acc: Any, model: Any, opt: Any, ckpt: Path, step: int) -> None:
    """Checkpoint ``step`` from rank 0 alone (every rank must call it: the RNG states are gathered)."""
    import torch

    rng = _gather(_rng_state(), acc.num_processes)
    if acc.is_main_process:
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # The trainable parameters only (LoRA and the score head, or everything when fully
        # fine-tuned): the frozen base weights are the model the stage loads anyway.
        trainable = {
            n: p.detach().cpu() for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad
        }
        state = {
            "step": step,
            "world_size": acc.num_processes,
            "model": trainable,
            "optimizer": opt.state_dict(),
            "rng": rng,
        }
        torch.save(state, tmp / CHECKPOINT_STATE)
        (tmp / CHECKPOINT_MARKER).write_text(json.dumps({"step": step}))
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(tmp, ckpt)
        log.info("reward: checkpoint saved at step %d: %s", step, ckpt)
    acc.wait_for_everyone()


def _load_checkpoint(acc: Any, model: Any, opt: Any, ckpt: Path) -> int:
    """Resume from ``ckpt`` if rank 0 finds a complete one; returns the step (0: none), the same on
    every rank."""
    import torch

    step = 0
    if acc.is_main_process and (ckpt / CHECKPOINT_MARKER).is_file() and (ckpt / CHECKPOINT_STATE).is_file():
        step = int(json.loads((ckpt / CHECKPOINT_MARKER).read_text())["step"])
    step = int(_broadcast(step, acc.num_processes))
    if not step:
        return 0
    # Onto the CPU: load_state_dict copies into the parameters on their device, and the optimizer
    # moves its state to theirs (accelerate's CPU device, cpu:0, is not a valid map_location).
    state = torch.load(ckpt / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
    unwrapped = acc.unwrap_model(model)
    trainable = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    if missing := trainable - set(state["model"]):
        raise RuntimeError(f"{ckpt}: the checkpoint lacks trainable parameters {sorted(missing)[:3]}")
    unwrapped.load_state_dict(state["model"], strict=False)
    opt.load_state_dict(state["optimizer"])
    if state["world_size"] == acc.num_processes:
        rng = state["rng"][acc.process_index]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    else:
        log.warning(
            "reward: the checkpoint was written by %d processes, now %d: RNG states not restored",
            state["world_size"],
            acc.num_processes,
        )
    log.info("reward: resumed from step %d", step)
    return step


def zero_score_head(model: Any) -> int:
    """Zero the weights of the reward model's score head (every copy peft keeps); returns how many.

    A random head makes the untrained reward model a random function of the hidden state, which RL
    would then optimise; from zero, the model starts as a constant (every pair a tie, accuracy 0.5)
    and any ranking it has comes from the labels.
    """
    import torch

    n = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "score" in name.split("."):
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            n += 1
    return n
