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

Data: ``<artifacts.labels>/labels.jsonl`` (see :mod:`rlaif_trainer.label`) or ``dataset.labels``.
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
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.data import finalize_dir, is_done, partial_dir, read_done, read_pairs
from rlaif_trainer.errors import BadInputError

log = logging.getLogger(__name__)

__all__ = [
    "bradley_terry_loss",
    "encode_response",
    "length_grouped_batches",
    "load_reward_scorer",
    "pair_loss",
    "run",
    "score_texts",
    "soft_label_loss",
    "split_pairs",
    "train_reward_model",
]

LABELS_FILE = "labels.jsonl"


# ---------------------------------------------------------------------------------------------- losses


def soft_label_loss(r_a: Any, r_b: Any, p_a: Any) -> Any:
    """Per-pair cross-entropy between ``p_a`` and ``softmax([r_a, r_b])``."""
    import torch.nn.functional as F

    d = r_a - r_b
    return p_a * F.softplus(-d) + (1.0 - p_a) * F.softplus(d)


def bradley_terry_loss(r_a: Any, r_b: Any, p_a: Any) -> Any:
    """Per-pair ``−log σ(r_win − r_lose)`` with the winner ``a`` when ``p_a > 0.5``."""
    import torch.nn.functional as F

    sign = (p_a > 0.5).to(r_a.dtype) * 2 - 1
    return F.softplus(-sign * (r_a - r_b))


def pair_loss(kind: str) -> Callable[[Any, Any, Any], Any]:
    if kind == "soft":
        return soft_label_loss
    if kind == "bradleyTerry":
        return bradley_terry_loss
    raise ValueError(f"unknown reward loss {kind!r}")


# ---------------------------------------------------------------------------------------------- data


def encode_response(tokenizer: Any, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of (prompt as user turn, response as assistant turn), keeping the last ``max_length``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = list(tokenizer.encode(text, add_special_tokens=False))
    else:
        ids = list(tokenizer.encode(prompt + "\n" + response, add_special_tokens=True))
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids[-max_length:]


def split_pairs(
    pairs: Sequence[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded shuffle, then the first ``ceil(eval_fraction · n)`` pairs are held out (at least one
    when ``eval_fraction > 0`` and there are two pairs or more)."""
    idx = list(range(len(pairs)))
    random.Random(f"split:{seed}").shuffle(idx)
    n_eval = math.ceil(eval_fraction * len(pairs)) if eval_fraction > 0 else 0
    if len(pairs) < 2:
        n_eval = 0
    n_eval = min(n_eval, len(pairs) - 1)
    ev = sorted(idx[:n_eval])
    tr = sorted(idx[n_eval:])
    return [pairs[i] for i in tr], [pairs[i] for i in ev]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, window: int = 50, min_batch: int = 1
) -> list[list[int]]:
    """Shuffle, sort by length (descending) within windows of ``window`` batches, cut, shuffle batches,
    then move the batch holding the longest item to the front.

    ``lengths`` are what a batch is padded to per item: for a pair, its longer response. The longest
    batch goes first, as in HF's ``LengthGroupedSampler``, so that running out of memory shows at
    step 1 rather than hours in.
    Batches smaller than ``min_batch`` (the last one) are dropped.
    """
    rng = random.Random(f"batches:{seed}:{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    span = max(batch_size * window, batch_size)
    batches: list[list[int]] = []
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s : s + span], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    batches = [b for b in batches if len(b) >= min_batch]
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]))
        batches.insert(0, batches.pop(longest))
    return batches


def _pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def _rewards(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> Any:
    """Scalar reward at the last real token of each (right-padded) sequence."""
    import torch

    ids, mask = _pad(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)  # no KV cache while training
    logits = out.logits
    if logits.dim() == 3:  # (B, L, 1) from a model that returns per-token scores
        last = mask.sum(-1) - 1
        logits = logits[torch.arange(len(seqs), device=device), last]
    return logits.view(-1).float()


# ---------------------------------------------------------------------------------------------- scoring


def score_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 16,
) -> list[float]:
    """Rewards of (prompt, response) pairs with a loaded reward model (batched, length-sorted)."""
    import torch

    seqs = [encode_response(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                r = _rewards(model, [seqs[i] for i in idx], pad, dev).cpu().tolist()
                for i, v in zip(idx, r, strict=True):
                    out[i] = float(v)
    finally:
        if was_training:
            model.train()
    return out


def load_reward_scorer(
    path: str | os.PathLike[str], *, device: Any = None, batch_size: int = 16, max_length: int | None = None
) -> Callable[[list[str], list[str]], list[float]]:
    """A ``(prompts, responses) -> rewards`` function from a reward stage output directory."""
    from rlaif_trainer.models import load_reward_model

    model, tok = load_reward_model(str(path), device=device)
    model.eval()
    meta_path = Path(path) / "reward_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    ml = max_length or int(meta.get("max_length", 512))

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        return score_texts(model, tok, prompts, responses, max_length=ml, batch_size=batch_size)

    return scorer


# ---------------------------------------------------------------------------------------------- training


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
            correct += (((ra > rb) == (p > 0.5)) & decided).sum()
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

    trainable = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused kernel avoids foreach's parameter-sized temporaries (peak memory)
        opt = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    device = acc.device
    model.train()

    step = 0
    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "trainer_state.json").is_file():
        acc.load_state(str(ckpt))
        step = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
        log.info("reward: resumed from step %d", step)
    resumed_from = step

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
                prom.record_step(
                    samples=len(batch),
                    seconds=time.perf_counter() - t_step,
                    tokens=sum(tokens[i] for i in batch),
                    loss=lv,
                    progress=step / total_steps,
                )
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4f}")
            if ckpt is not None and (step % checkpoint_every == 0) and step < total_steps:
                _save_checkpoint(acc, ckpt, step)
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


def _save_checkpoint(acc: Any, ckpt: Path, step: int) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)
    acc.wait_for_everyone()


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

    from rlaif_trainer.models import load_reward_model

    spec, art = config.spec, config.artifacts
    if is_done(art.reward_model):
        return {**read_done(art.reward_model), "resumed": True}
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
