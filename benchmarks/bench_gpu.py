"""The trainer's GPU path, measured in one run: reward-model training, the RL step and labeling,
each against TRL on the same chip in the same process, so that every figure is also a ratio.

Models are Llama-style and built from a config with random weights (throughput does not depend on
the weights); the tokenizer is a byte-level BPE trained here on a generated corpus. Nothing is
downloaded. Sizes (``--rm-size``, ``--rl-size``, ``--label-size``):

* ``tiny``: hidden 64, 2 layers, vocab 600 (the CPU smoke test: every code path, in about a minute);
* ``0.5b``: hidden 1024, 28 layers, 16 heads / 4 KV heads, MLP 4096, vocab 32768 (0.46 B parameters);
* ``1.5b``: hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, vocab 32768 (1.36 B; Qwen2.5-1.5B's
  shape with a smaller vocabulary).

Sections (``--sections``, comma-separated):

* ``peak``: a large dense matmul (bf16 8192³ on a GPU, fp32 1024³ on the CPU): the achievable rate
  that MFU is also quoted against (beside the datasheet's, where the chip is known);
* ``rm``: reward-model training (Bradley-Terry, full fine-tune, fp32 master weights with bf16
  autocast on a GPU, fused AdamW): ours (``reward_model.training.train_reward_model``) against
  ``trl.RewardTrainer`` on the same pairs, tokenized identically, same batch size, learning rate,
  precision, no gradient checkpointing on either side. Pairs/s, real (unpadded) tokens/s, padded
  tokens/s, peak memory, MFU (the FLOP count is :func:`train_flops`);
* ``rl``: the RL step at k = 4 (ours with GRPO and with RLOO, TRL's ``GRPOTrainer`` with GRPO): step
  time, generation tokens/s, training tokens/s (prompt + response tokens through the update),
  the generation share of the step, and MFU of the update (:func:`rl_update_flops`);
* ``label``: pairs/s of the pairwise (both orders) and pointwise (two principles) HF labelers, with
  the prefix cache on and off;
* ``gen`` (last: compiling can take minutes): one rollout batch through each generation path
  (ours, HF ``generate`` with the dynamic cache, with the static cache, with the static cache and
  ``torch.compile``), tokens/s each.

Each section is timed after warm-up steps (``--warmup``), with the device synchronised at every
stamp. Every case runs in this process one after another; ``--rounds`` repeats the RM and RL cases
with the order reversed in every other round, so that drifting load or clocks show as spread.
A section that fails is recorded in the JSON with its error and the run goes on.

    python benchmarks/bench_gpu.py --preset smoke --json /tmp/bench_gpu.json     # CPU, ~1 min
    python benchmarks/bench_gpu.py --preset gpu --json $OUT/bench_gpu.json       # one H200, ~5 min

The device run that carries the missing wheels is ``benchmarks/device_run.sh`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------ sizes

#: Llama-style shapes (head_dim = hidden / heads). ``tiny`` matches rlaif_trainer.testing's model.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 600,
    },
    "0.5b": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 32768,
    },
    "1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 32768,
    },
}

#: Workloads per preset. ``gpu`` is sized to finish in about five minutes on one H200 (so that the
#: device run, with its start, fits twice in the 15-minute lease); ``smoke`` runs every code path
#: on two CPU cores in about a minute.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "rm_size": "tiny",
        "rl_size": "tiny",
        "label_size": "tiny",
        "rm_pairs": 16,
        "rm_batch": 4,
        "rm_max_length": 64,
        "rm_steps": 3,
        "rl_batch": 2,
        "rl_k": 4,
        "rl_new_tokens": 8,
        "rl_steps": 3,
        "label_pairs": 4,
        "warmup": 1,
        "gen_variants": "ours,hf-dynamic",
        "matmul_n": 512,
    },
    "gpu": {
        "rm_size": "1.5b",
        "rl_size": "0.5b",
        "label_size": "0.5b",
        "rm_pairs": 512,
        "rm_batch": 8,
        "rm_max_length": 1024,
        "rm_steps": 16,
        "rl_batch": 16,
        "rl_k": 4,
        "rl_new_tokens": 128,
        "rl_steps": 6,
        "label_pairs": 128,
        "warmup": 2,
        "gen_variants": "ours,hf-dynamic,hf-static,hf-static-compile",
        "matmul_n": 8192,
    },
}

#: Dense bf16 peak (no sparsity) by the vendors' datasheets, TFLOP/s: a lead, not a measurement.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}

# ------------------------------------------------------------------------------------ FLOP count


def _get(cfg: Mapping[str, Any] | Any, key: str) -> int:
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    if value is None:
        raise KeyError(key)
    return int(value)


def _head_dim(cfg: Mapping[str, Any] | Any) -> int:
    explicit = cfg.get("head_dim") if isinstance(cfg, Mapping) else getattr(cfg, "head_dim", None)
    if explicit:
        return int(explicit)
    return _get(cfg, "hidden_size") // _get(cfg, "num_attention_heads")


def matmul_params(cfg: Mapping[str, Any] | Any, *, head_out: int) -> int:
    """Weights that take part in a matmul per token: every decoder layer's q, k, v, o and the
    SwiGLU MLP's gate, up and down projections, plus the output head (``head_out`` = vocab size for
    a causal LM, 1 for a reward model's score head). The embedding lookup is no matmul and is left
    out; norms, rotary embeddings and biases are negligible and left out."""
    d = _get(cfg, "hidden_size")
    ff = _get(cfg, "intermediate_size")
    layers = _get(cfg, "num_hidden_layers")
    hd = _head_dim(cfg)
    q = _get(cfg, "num_attention_heads") * hd
    kv = _get(cfg, "num_key_value_heads") * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * ff
    return layers * per_layer + d * head_out


def attention_fwd_flops(cfg: Mapping[str, Any] | Any, lengths: Sequence[int]) -> int:
    """Forward FLOPs of the attention matmuls (``QKᵀ`` and ``PV``) for sequences of ``lengths``:
    ``2 · 2 · layers · heads · head_dim · s²`` per sequence. The full ``s × s`` square is counted
    (PaLM's convention, Chowdhery et al. 2022, app. B), not the causal half."""
    layers = _get(cfg, "num_hidden_layers")
    width = _get(cfg, "num_attention_heads") * _head_dim(cfg)
    return sum(4 * layers * width * s * s for s in lengths)


def train_flops(cfg: Mapping[str, Any] | Any, lengths: Sequence[int], *, head_out: int) -> int:
    """Model FLOPs of one forward and backward pass with every weight trained:
    ``6 · N · T`` (forward 2, backward 4: input and weight gradients) plus the attention matmuls,
    whose backward costs twice their forward: ``3 · attention_fwd``. ``T`` is the number of real
    (unpadded) tokens: padding is work the chip does but the model does not need, so it counts
    against MFU."""
    n = matmul_params(cfg, head_out=head_out)
    return 6 * n * sum(lengths) + 3 * attention_fwd_flops(cfg, lengths)


def rl_update_flops(
    cfg: Mapping[str, Any] | Any, prompt_lengths: Sequence[int], response_lengths: Sequence[int]
) -> int:
    """Model FLOPs of one RL update of a LoRA policy over sequences of prompt + response: the
    reference forward, the policy forward and its backward through frozen weights, which needs
    the input gradients only (as much as a forward). The decoder body over all ``T`` tokens:
    ``3 · 2 · N_body · T``; the LM head over the response tokens only (their logits are all the
    update reads, and ours asks for no more, ``logits_to_keep``): ``3 · 2 · d · V · R``; attention:
    ``A`` each forward, ``2A`` the backward, ``4A`` in all. The LoRA matrices' own FLOPs
    (rank ≪ hidden) are left out."""
    body = matmul_params(cfg, head_out=0)
    head = _get(cfg, "hidden_size") * _get(cfg, "vocab_size")
    lengths = [p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)]
    return 6 * body * sum(lengths) + 6 * head * sum(response_lengths) + 4 * attention_fwd_flops(cfg, lengths)


def decode_bytes(cfg: Mapping[str, Any] | Any, *, bytes_per_param: int) -> int:
    """Weight bytes one decode step reads (every matmul weight once, shared by the whole batch):
    the floor of a decode step is this over the memory bandwidth."""
    return matmul_params(cfg, head_out=_get(cfg, "vocab_size")) * bytes_per_param


# ------------------------------------------------------------------------------ tokenizer, models

_SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list("aeiou")


def synthetic_words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def build_tokenizer(out_dir: Path, vocab_size: int, *, seed: int = 0) -> Any:
    """A byte-level BPE of exactly ``vocab_size`` tokens, trained here on generated text.

    Same pre-tokenizer, special tokens and chat template as :mod:`rlaif_trainer.testing` (digits
    split, ``"1"``–``"9"``, ``"Yes"``, ``"No"`` single tokens), so the labelers work on it. The
    model's vocabulary equals the tokenizer's, so every sampled id decodes.
    """
    from rlaif_trainer.testing import TINY_CORPUS, train_chat_tokenizer

    rng = random.Random(seed)
    n_words = 200 if vocab_size <= 1000 else 60_000
    words = synthetic_words(n_words, seed)
    lines = 50 if vocab_size <= 1000 else 20_000
    corpus = TINY_CORPUS * 4 + ["Yes No"] * 50
    corpus += [" ".join(rng.choice(words) for _ in range(40)) for _ in range(lines)]
    fast = train_chat_tokenizer(corpus, vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def llama_config(size: str, tok: Any, *, attn_implementation: str = "sdpa", **extra: Any) -> Any:
    from transformers import LlamaConfig

    shape = dict(SIZES[size])
    shape["vocab_size"] = len(tok)
    return LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        attn_implementation=attn_implementation,
        **extra,
    )


def build_model(
    kind: str,
    size: str,
    tok: Any,
    device: Any,
    dtype: Any,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> Any:
    """A random-weight ``LlamaForCausalLM`` (``kind="causal"``) or one-output
    ``LlamaForSequenceClassification`` (``"reward"``), initialised on ``device`` in ``dtype``."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    cls = LlamaForCausalLM if kind == "causal" else LlamaForSequenceClassification
    extra: dict[str, Any] = {"num_labels": 1} if kind == "reward" else {}
    cfg = llama_config(size, tok, attn_implementation=attn_implementation, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(cfg).to(dtype)
    if kind == "causal":
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    return model


# --------------------------------------------------------------------------------- measurement


class Device:
    """Synchronisation and peak-memory reads for the CPU or one CUDA device."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        self.free()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        """Peak allocated device memory since :meth:`reset_peak`; None on the CPU (this process
        runs every case, so its high-water RSS is not one case's)."""
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.name}
        if self.cuda:
            props = self.torch.cuda.get_device_properties(0)
            out.update(
                gpu=props.name,
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda=self.torch.version.cuda,
            )
        else:
            out.update(cpus=os.cpu_count(), torch_threads=self.torch.get_num_threads())
        return out


def matmul_peak_tflops(dev: Device, n: int, reps: int = 10) -> float:
    """Achieved TFLOP/s of an ``n × n × n`` matmul on random data (bf16 on a GPU, fp32 on the CPU),
    median of ``reps``, three input sets rotated so that repeated runs do not measure a cache."""
    torch = dev.torch
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    mats = [
        (torch.randn(n, n, device=dev.name, dtype=dtype), torch.randn(n, n, device=dev.name, dtype=dtype))
    ]
    mats += [(torch.randn_like(mats[0][0]), torch.randn_like(mats[0][1])) for _ in range(2)]
    for a, b in mats:
        a @ b
    times = []
    for i in range(reps):
        a, b = mats[i % len(mats)]
        t0 = dev.now()
        a @ b
        times.append(dev.now() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


class TokenCounter:
    """A forward pre-hook on the input embeddings: per call, the time and each row's real
    (non-pad) length and the padded shape. Both sides' training forwards pass through it, so
    tokens are counted the same way for ours and TRL's."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.pad_id = pad_id
        self.calls: list[tuple[float, list[int], int]] = []
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, _module: Any, args: tuple[Any, ...]) -> None:
        ids = args[0]
        lengths = (ids != self.pad_id).sum(dim=1).tolist()
        self.calls.append((time.perf_counter(), [int(x) for x in lengths], int(ids.numel())))

    def between(self, t0: float, t1: float) -> tuple[list[int], int]:
        lengths: list[int] = []
        padded = 0
        for t, ls, n in self.calls:
            if t0 < t <= t1:
                lengths.extend(ls)
                padded += n
        return lengths, padded

    def close(self) -> None:
        self.handle.remove()


def _mfu(flops: float, seconds: float, peaks: Mapping[str, float | None]) -> dict[str, float | None]:
    rate = flops / seconds / 1e12
    out: dict[str, float | None] = {"model_tflops": rate}
    for name, peak in peaks.items():
        out[f"mfu_vs_{name}"] = rate / peak if peak else None
    return out


# ----------------------------------------------------------------------------------- workloads


def make_pairs(n: int, max_words: int, seed: int = 0) -> list[dict[str, Any]]:
    """Hard-labelled pairs with varied lengths (prompts 5–40 % of ``max_words``, responses up to
    half of it), so that padding and length grouping matter as they do on real data."""
    from rlaif_trainer.testing import synthetic_pairs

    return synthetic_pairs(
        n,
        prompt_words=(max(2, max_words // 20), max(3, max_words * 2 // 5)),
        response_words=(4, max(5, max_words // 2)),
        seed=seed,
    )


RL_PROMPTS = [
    "Summarize: The city council approved a new park near the river on Monday.",
    "Explain why the sky is blue.",
    "Give me a recipe for pancakes.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Is the response helpful, honest and harmless?",
    "Summarize: A good summary captures the most important points of the original text.",
    "The quick brown fox jumps over the lazy dog. Explain the sentence.",
]


def _reward_texts(responses: Sequence[str]) -> list[float]:
    from rlaif_trainer.feedback.rules import brevity_score

    return [brevity_score("", r) for r in responses]


# ------------------------------------------------------------------------------ reward model


def _rm_window(stamps: list[float], warmup: int) -> tuple[float, float, int]:
    if len(stamps) <= warmup:
        raise RuntimeError(f"only {len(stamps)} optimizer steps, need more than --warmup={warmup}")
    return stamps[warmup - 1] if warmup else stamps[0], stamps[-1], len(stamps) - max(warmup, 1)


def rm_case(method: str, ctx: Context) -> dict[str, Any]:
    """One reward-model training run (``ours`` or ``trl``) and its steady-state figures."""
    torch = ctx.dev.torch
    a = ctx.args
    tok = ctx.tokenizer(a.rm_size)
    pairs = make_pairs(a.rm_pairs, max_words=max(8, a.rm_max_length // 3))
    ctx.dev.reset_peak()
    model = build_model("reward", a.rm_size, tok, ctx.dev.name, torch.float32)
    counter = TokenCounter(model, tok.pad_token_id)
    stamps: list[float] = []
    steps = a.rm_steps
    try:
        if method == "ours":
            from accelerate import Accelerator

            from rlaif_trainer.reward_model.training import train_reward_model

            acc = Accelerator(cpu=not ctx.dev.cuda, mixed_precision="bf16" if ctx.dev.cuda else "no")
            train_reward_model(
                model,
                tok,
                pairs,
                loss="bradleyTerry",
                epochs=1000,
                learning_rate=1e-5,
                batch_size=a.rm_batch,
                max_length=a.rm_max_length,
                max_steps=steps,
                accelerator=acc,
                progress=False,
                on_step=lambda _s, _v: stamps.append(ctx.dev.now()),
            )
        else:
            from datasets import Dataset
            from transformers import TrainerCallback
            from trl import RewardConfig, RewardTrainer

            from rlaif_trainer.testing import trl_preference_rows

            rows = trl_preference_rows(tok, pairs, a.rm_max_length)

            class Stamp(TrainerCallback):
                def on_step_end(self, *_a: Any, **_k: Any) -> None:
                    stamps.append(ctx.dev.now())

            with tempfile.TemporaryDirectory() as out:
                cfg = RewardConfig(
                    output_dir=out,
                    per_device_train_batch_size=a.rm_batch,
                    max_steps=steps,
                    learning_rate=1e-5,
                    logging_steps=10_000,
                    save_strategy="no",
                    report_to=[],
                    # Our sequences are already cut to max_length; the margin keeps TRL from cutting again.
                    max_length=a.rm_max_length + 8,
                    gradient_checkpointing=False,
                    bf16=ctx.dev.cuda,
                    use_cpu=not ctx.dev.cuda,
                    optim="adamw_torch_fused" if ctx.dev.cuda else "adamw_torch",
                    dataloader_num_workers=0,
                    seed=0,
                    disable_tqdm=True,
                )
                trainer = RewardTrainer(
                    model=model,
                    args=cfg,
                    train_dataset=Dataset.from_list(rows),
                    processing_class=tok,
                    callbacks=[Stamp()],
                )
                trainer.train()
        t0, t1, n_steps = _rm_window(stamps, a.warmup)
        lengths, padded = counter.between(t0, t1)
        secs = t1 - t0
        cfg_model = SIZES[a.rm_size] | {"vocab_size": len(tok)}
        flops = train_flops(cfg_model, lengths, head_out=1)
        return {
            "method": method,
            "size": a.rm_size,
            "steps_timed": n_steps,
            "seconds": secs,
            "pairs_per_s": n_steps * a.rm_batch / secs,
            "tokens_per_s": sum(lengths) / secs,
            "padded_tokens_per_s": padded / secs,
            "padding_fraction": 1 - sum(lengths) / padded if padded else None,
            "peak_mem_mib": ctx.dev.peak_mib(),
            **_mfu(flops, secs, ctx.peaks),
        }
    finally:
        counter.close()
        del model
        ctx.dev.free()


# ------------------------------------------------------------------------------------------ RL


def _rl_job(ctx: Context, algorithm: str, work: Path) -> Any:
    from rlaif_api import RLAIFJob, resolve_stage_configs

    a = ctx.args
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in RL_PROMPTS * 4))
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "bench-gpu"},
            "spec": {
                "policy": {
                    "model": str(ctx.tokenizer_dir(a.rl_size)),
                    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
                },
                "dataset": {"prompts": str(prompts), "evalPrompts": str(prompts)},
                "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
                "rl": {
                    "algorithm": algorithm,
                    "reward": "direct",
                    "steps": a.rl_steps,
                    "batchSize": a.rl_batch,
                    "samplesPerPrompt": a.rl_k,
                    "maxNewTokens": a.rl_new_tokens,
                    "temperature": 0.9,
                    "learningRate": 1e-4,
                    "klCoef": 0.05,
                    "ppoEpochs": 1,
                    "checkpointEvery": 10_000,
                },
                "stages": ["rl"],
                "seed": 0,
            },
        }
    )
    return resolve_stage_configs(job, work / "ws")["rl"]


def _prompt_lengths(tok: Any, prompts: Sequence[str]) -> list[int]:
    from rlaif_trainer.modeling.chat import format_prompts

    return [len(tok.encode(t, add_special_tokens=False)) for t in format_prompts(tok, list(prompts))]


def _rl_policy_dtype(dev: Device) -> Any:
    # The frozen base in bf16 on a GPU (what load_causal_lm picks there); LoRA adapters stay fp32.
    return dev.torch.bfloat16 if dev.cuda else dev.torch.float32


def _rl_summary(
    ctx: Context, name: str, steps: list[dict[str, float]], size: str, vocab: int
) -> dict[str, Any]:
    w = ctx.args.warmup
    rows = steps[w:]
    if not rows:
        raise RuntimeError(f"{name}: no steps left after --warmup={w}")
    step_s = sum(r["step_s"] for r in rows)
    gen_s = sum(r["gen_s"] for r in rows)
    train_s = sum(r["train_s"] for r in rows)
    gen_tokens = sum(r["gen_tokens"] for r in rows)
    train_tokens = sum(r["train_tokens"] for r in rows)
    cfg_model = SIZES[size] | {"vocab_size": vocab}
    flops = sum(rl_update_flops(cfg_model, r["prompt_lengths"], r["response_lengths"]) for r in rows)
    bpp = 2 if ctx.dev.cuda else 4
    decode_gbs = (
        decode_bytes(cfg_model, bytes_per_param=bpp) * ctx.args.rl_new_tokens * len(rows) / gen_s / 1e9
    )
    return {
        "method": name,
        "size": size,
        "steps_timed": len(rows),
        "step_s": step_s / len(rows),
        "generation_s": gen_s / len(rows),
        "training_s": train_s / len(rows),
        "generation_share": gen_s / step_s,
        "tokens_per_s": gen_tokens / step_s,
        "generation_tokens_per_s": gen_tokens / gen_s,
        "training_tokens_per_s": train_tokens / train_s,
        "decode_weight_read_gb_per_s": decode_gbs,
        "peak_mem_mib": ctx.dev.peak_mib(),
        **{f"update_{k}": v for k, v in _mfu(flops, train_s, ctx.peaks).items()},
    }


def rl_ours(algorithm: str, ctx: Context) -> dict[str, Any]:
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    a, dev = ctx.args, ctx.dev
    tok = ctx.tokenizer(a.rl_size)
    dev.reset_peak()
    model = build_model("causal", a.rl_size, tok, dev.name, _rl_policy_dtype(dev))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = loop_config(_rl_job(ctx, algorithm, Path(tmp)))
        trainer = RLTrainer(
            cfg,
            model=model,
            tokenizer=tok,
            reward_fn=lambda _p, r: _reward_texts(r),
            progress=False,
            device=dev.name,
            work_dir=Path(tmp) / "ours",
        )
        # The trainer's own per-step timings (gen / reward / train) come from host clocks; stamp
        # the device at each step's end too, so that queued GPU work is charged to its own step.
        steps: list[dict[str, float]] = []
        original = trainer.train_step

        def timed_step(step: int) -> dict[str, Any]:
            dev.sync()
            metrics = original(step)
            dev.sync()
            k = trainer.k
            prompts = [p for p in trainer.prompts_for_step(step) for _ in range(k)]
            plen = _prompt_lengths(tok, prompts)
            gen_tokens = float(metrics["tokens"])
            mean_resp = gen_tokens / len(prompts)
            steps.append(
                {
                    "step_s": metrics["step_time_s"],
                    "gen_s": metrics["gen_time_s"],
                    "train_s": metrics["step_time_s"] - metrics["gen_time_s"] - metrics["reward_time_s"],
                    "gen_tokens": gen_tokens,
                    "train_tokens": sum(plen) + gen_tokens,
                    "prompt_lengths": plen,
                    "response_lengths": [round(mean_resp)] * len(plen),
                }
            )
            return metrics

        trainer.train_step = timed_step  # type: ignore[method-assign]
        trainer.train()
        # The trainer and model go with this frame; _section frees the device memory after it.
        return _rl_summary(ctx, f"ours-{algorithm}", steps, a.rl_size, len(tok))


def _ours_prompt_order(cfg: Any, steps: int) -> list[str]:
    """The prompts ours samples at steps ``0 .. steps-1`` (one process), each once, in order: TRL's
    dataset, so that both sides sample from the same prompts in the same order. Calls ours'
    ``prompts_for_step`` on just the state it reads, without building a policy."""
    from types import SimpleNamespace

    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    loop = loop_config(cfg)
    state = SimpleNamespace(
        train_prompts=list(loop.train_prompts), config=loop, seed=loop.seed, rank=0, world=1
    )
    return [p for s in range(steps) for p in RLTrainer.prompts_for_step(state, s)]  # type: ignore[arg-type]


def rl_trl(ctx: Context) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same model, prompts (in ours' order), LoRA, sampling and reward."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    a, dev = ctx.args, ctx.dev
    tok = ctx.tokenizer(a.rl_size)
    with tempfile.TemporaryDirectory() as tmp:
        order = _ours_prompt_order(_rl_job(ctx, "grpo", Path(tmp)), a.rl_steps + 1)
    dev.reset_peak()
    model = build_model("causal", a.rl_size, tok, dev.name, _rl_policy_dtype(dev))
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in order]})

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return _reward_texts([c[-1]["content"] if isinstance(c, list) else str(c) for c in completions])

    steps: list[dict[str, float]] = []
    gen_time: list[float] = []
    lengths_logged: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_a: Any, **_k: Any) -> None:
            self.t0 = dev.now()
            gen_time.append(0.0)

        def on_step_end(self, *_a: Any, **_k: Any) -> None:
            steps.append({"step_s": dev.now() - self.t0, "gen_s": gen_time[-1]})

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **_k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths_logged.append(float(logs["completions/mean_length"]))

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=a.rl_batch * a.rl_k,
            num_generations=a.rl_k,
            gradient_accumulation_steps=1,
            max_completion_length=a.rl_new_tokens,
            temperature=0.9,
            learning_rate=1e-4,
            beta=0.05,
            num_iterations=1,
            max_steps=a.rl_steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=not dev.cuda,
            bf16=dev.cuda,
            disable_dropout=True,
            seed=0,
            shuffle_dataset=False,
            disable_tqdm=True,
            # TRL's default trades ~20% compute for memory; ours does not, so compare like with like.
            gradient_checkpointing=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            processing_class=tok,
            peft_config=LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules=["q_proj", "v_proj"],
                task_type="CAUSAL_LM",
            ),
            callbacks=[Timer()],
        )
        trainer.remove_callback(PrinterCallback)
        inner = trainer.model
        original = inner.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            t0 = dev.now()
            try:
                return original(*args, **kwargs)
            finally:
                if gen_time:
                    gen_time[-1] += dev.now() - t0

        inner.generate = timed_generate
        trainer.train()
    n_seq = a.rl_batch * a.rl_k
    for i, row in enumerate(steps):
        prompts = [p for p in order[i * a.rl_batch : (i + 1) * a.rl_batch] for _ in range(a.rl_k)]
        plen = _prompt_lengths(tok, prompts)
        mean_resp = lengths_logged[i] if i < len(lengths_logged) else float(a.rl_new_tokens)
        row["gen_tokens"] = mean_resp * n_seq
        row["train_tokens"] = sum(plen) + mean_resp * n_seq
        row["train_s"] = row["step_s"] - row["gen_s"]
        row["prompt_lengths"] = plen  # type: ignore[assignment]
        row["response_lengths"] = [round(mean_resp)] * len(plen)  # type: ignore[assignment]
    result = _rl_summary(ctx, "trl-grpo", steps, a.rl_size, len(tok))
    del trainer, model, inner
    dev.free()
    return result


# ---------------------------------------------------------------------------------- generation


def gen_variants(ctx: Context) -> list[dict[str, Any]]:
    """One rollout batch (rl_batch × k sequences, rl_new_tokens each) through each generation path
    on a LoRA-wrapped policy; tokens/s of the median of three calls after one warm-up call."""
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig

    from rlaif_trainer.modeling.chat import format_prompts
    from rlaif_trainer.modeling.generation import eos_ids, generate, tokenize_prompts

    a, dev = ctx.args, ctx.dev
    tok = ctx.tokenizer(a.rl_size)
    model = build_model("causal", a.rl_size, tok, dev.name, _rl_policy_dtype(dev))
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    model.eval()
    prompts = [RL_PROMPTS[i % len(RL_PROMPTS)] for i in range(a.rl_batch) for _ in range(a.rl_k)]
    texts = format_prompts(tok, prompts)
    ids, mask = tokenize_prompts(tok, texts, dev.name)
    stop = eos_ids(tok, model)
    # Random weights almost never sample EOS; suppressing it makes every call the same length.
    n_new = a.rl_new_tokens

    def hf(cache: str | None, compile_: bool) -> Callable[[], int]:
        cfg = GenerationConfig(
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=True,
            temperature=0.9,
            top_p=1.0,
            top_k=0,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
            cache_implementation=cache,
            disable_compile=not compile_,
        )

        def call() -> int:
            with dev.torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            return int(out.shape[1] - ids.shape[1]) * out.shape[0]

        return call

    def ours() -> int:
        g = generate(model, tok, texts, max_new_tokens=n_new, temperature=0.9, device=dev.name)
        return int(g.response_mask.sum())

    variants: dict[str, Callable[[], int]] = {
        "ours": ours,
        "hf-dynamic": hf(None, False),
        "hf-static": hf("static", False),
        "hf-static-compile": hf("static", True),
    }
    results = []
    for name in a.gen_variants.split(","):
        fn = variants[name]
        try:
            t0 = dev.now()
            fn()
            first_s = dev.now() - t0
            runs = []
            for _ in range(3):
                t0 = dev.now()
                n = fn()
                runs.append((dev.now() - t0, n))
            secs, n = sorted(runs)[1]
            results.append(
                {
                    "variant": name,
                    "first_call_s": first_s,
                    "seconds": secs,
                    "tokens": n,
                    "tokens_per_s": n / secs,
                }
            )
        except Exception as exc:  # a variant this torch/transformers cannot run is reported, not fatal
            results.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return results


# ------------------------------------------------------------------------------------ labeling


def label_cases(ctx: Context) -> list[dict[str, Any]]:
    from rlaif_api import FewShotExample
    from rlaif_trainer.feedback.hf import HFPairwiseLabeler, HFPointwiseLabeler

    a, dev = ctx.args, ctx.dev
    tok = ctx.tokenizer(a.label_size)
    model = build_model("causal", a.label_size, tok, dev.name, _rl_policy_dtype(dev))
    model.eval()
    pairs = make_pairs(a.label_pairs, max_words=120, seed=1)
    prompts = [p["prompt"] for p in pairs]
    ra = [p["response_a"] for p in pairs]
    rb = [p["response_b"] for p in pairs]
    few = [
        FewShotExample(
            prompt="What is the capital of Italy?",
            response_a="Rome is the capital of Italy.",
            response_b="Italy is a country in Europe with many cities.",
            preferred=1,
        )
    ]
    results = []
    for mode in ("pairwise", "pointwise"):
        for cached in (True, False):
            if mode == "pairwise":
                lab: Any = HFPairwiseLabeler(
                    model, tok, preamble="detailed", few_shot=few, batch_size=16, use_prefix_cache=cached
                )
            else:
                lab = HFPointwiseLabeler(
                    model,
                    tok,
                    principles=["Is the response helpful?", "Is the response relevant to the prompt?"],
                    batch_size=16,
                    use_prefix_cache=cached,
                )
            lab.preference(prompts[:2], ra[:2], rb[:2])  # warm-up
            lab.scorer.clear_cache()  # the timed run pays for its head once, as a stage does
            t0 = dev.now()
            lab.preference(prompts, ra, rb)
            secs = dev.now() - t0
            results.append(
                {
                    "mode": mode,
                    "prefix_cache": cached,
                    "pairs": len(pairs),
                    "seconds": secs,
                    "pairs_per_s": len(pairs) / secs,
                }
            )
    for mode in ("pairwise", "pointwise"):
        on = next(r for r in results if r["mode"] == mode and r["prefix_cache"])
        off = next(r for r in results if r["mode"] == mode and not r["prefix_cache"])
        on["prefix_cache_speedup"] = on["pairs_per_s"] / off["pairs_per_s"]
    del model
    dev.free()
    return results


# ---------------------------------------------------------------------------------------- main


class Context:
    """What every case shares: the arguments, the device, the tokenizers (one per vocab size, built
    once) and the peak rates MFU is quoted against."""

    def __init__(self, args: argparse.Namespace, dev: Device, workdir: Path) -> None:
        self.args = args
        self.dev = dev
        self.workdir = workdir
        self.peaks: dict[str, float | None] = {}
        self._toks: dict[int, Any] = {}

    def tokenizer_dir(self, size: str) -> Path:
        return self.workdir / f"tokenizer-{SIZES[size]['vocab_size']}"

    def tokenizer(self, size: str) -> Any:
        vocab = SIZES[size]["vocab_size"]
        if vocab not in self._toks:
            self._toks[vocab] = build_tokenizer(self.tokenizer_dir(size), vocab)
        return self._toks[vocab]


@contextlib.contextmanager
def _section(results: dict[str, Any], name: str, dev: Device, json_path: Path | None) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    except Exception as exc:
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
    finally:
        dev.free()  # the case's models and optimizer states are garbage once it has returned
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[bench_gpu] {name} done after {time.perf_counter() - t0:.1f} s", flush=True)
        if json_path is not None:  # after every section, so a run cut short keeps what it measured
            _write_json(json_path, results)


def _write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pydantic"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios ours / TRL from the per-round figures (the mean over rounds of each side)."""
    out: dict[str, Any] = {}

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.mean(vals) if vals else None

    rm = results.get("rm", [])
    ours = [r for r in rm if r["method"] == "ours"]
    trl = [r for r in rm if r["method"] == "trl"]
    if ours and trl:
        out["rm_pairs_per_s_ours_over_trl"] = _ratio(mean(ours, "pairs_per_s"), mean(trl, "pairs_per_s"))
        out["rm_peak_mem_ours_over_trl"] = _ratio(mean(ours, "peak_mem_mib"), mean(trl, "peak_mem_mib"))
        out["rm_mfu_vs_datasheet_ours"] = mean(ours, "mfu_vs_datasheet")
        out["rm_mfu_vs_measured_matmul_ours"] = mean(ours, "mfu_vs_measured_matmul")
        out["rm_mfu_vs_measured_matmul_trl"] = mean(trl, "mfu_vs_measured_matmul")
    rl = results.get("rl", [])
    trl_rows = [r for r in rl if r["method"] == "trl-grpo"]
    for name in ("ours-grpo", "ours-rloo"):
        rows = [r for r in rl if r["method"] == name]
        if rows and trl_rows:
            for key in ("tokens_per_s", "generation_tokens_per_s", "training_tokens_per_s"):
                out[f"rl_{key}_{name}_over_trl"] = _ratio(mean(rows, key), mean(trl_rows, key))
        if rows:
            out[f"rl_generation_share_{name}"] = mean(rows, "generation_share")
    return out


def print_table(results: dict[str, Any]) -> None:
    def f(v: Any, spec: str = ".3g") -> str:
        return "-" if v is None else format(v, spec)

    print()
    env = results["environment"]
    print(
        f"device {env.get('gpu') or env['device']}  torch {results['versions']['torch']}  "
        f"transformers {results['versions']['transformers']}  trl {results['versions']['trl']}"
    )
    if "peak" in results:
        print(f"matmul peak (measured): {results['peak']['measured_matmul_tflops']:.3g} TFLOP/s")
    for r in results.get("rm", []):
        print(
            f"rm  {r['method']:9} {r['size']:5} pairs/s {f(r['pairs_per_s'])}  tok/s {f(r['tokens_per_s'])}  "
            f"pad {f(r['padding_fraction'], '.2f')}  peak MiB {f(r['peak_mem_mib'], '.0f')}  "
            f"MFU {f(r.get('mfu_vs_datasheet'), '.3f')} (vs measured {f(r.get('mfu_vs_measured_matmul'), '.3f')})"
        )
    for r in results.get("rl", []):
        print(
            f"rl  {r['method']:9} {r['size']:5} step s {f(r['step_s'])}  tok/s {f(r['tokens_per_s'])}  "
            f"gen tok/s {f(r['generation_tokens_per_s'])}  train tok/s {f(r['training_tokens_per_s'])}  "
            f"gen share {f(r['generation_share'], '.2f')}  update MFU {f(r.get('update_mfu_vs_datasheet'), '.3f')}"
        )
    for r in results.get("gen", []):
        print(
            f"gen {r['variant']:18} tok/s {f(r.get('tokens_per_s'))}  first call s {f(r.get('first_call_s'))}"
            + (f"  ERROR {r['error']}" if "error" in r else "")
        )
    for r in results.get("label", []):
        print(
            f"label {r['mode']:9} cache {'on ' if r['prefix_cache'] else 'off'}  pairs/s {f(r['pairs_per_s'])}"
            + (f"  speed-up {r['prefix_cache_speedup']:.2f}x" if "prefix_cache_speedup" in r else "")
        )
    for k, v in results.get("summary", {}).items():
        print(f"{k}: {f(v)}")
    for k, v in results.get("errors", {}).items():
        print(f"ERROR in {k}: {v.splitlines()[0] if v else v}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="smoke", help="workload sizes (default smoke)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--sections",
        default="peak,rm,rl,label,gen",
        help="comma-separated: peak,rm,rl,label,gen (default all, in this order)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="rounds of the rm and rl cases, order reversed each round"
    )
    p.add_argument("--skip-trl", action="store_true", help="only measure rlaif_trainer")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="write the results here")
    for key, value in PRESETS["gpu"].items():
        flag = "--" + key.replace("_", "-")
        kind = type(value)
        choices = sorted(SIZES) if key.endswith("_size") else None
        p.add_argument(flag, type=kind, default=None, choices=choices, help=f"override the preset's {key}")
    return p


def resolve_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = Device(device)
    sections = args.sections.split(",")
    results: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": _versions(),
        "environment": dev.describe() | {"load_avg_at_start": os.getloadavg()},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(args, dev, Path(tmp))
        if "peak" in sections:
            with _section(results, "peak", dev, args.json):
                measured = matmul_peak_tflops(dev, args.matmul_n)
                gpu = results["environment"].get("gpu") or ""
                sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in gpu), None)
                results["peak"] = {"measured_matmul_tflops": measured, "datasheet_bf16_tflops": sheet}
                ctx.peaks = {"datasheet": sheet, "measured_matmul": measured}
        methods = ["ours"] + ([] if args.skip_trl else ["trl"])
        for r in range(args.rounds):
            order = methods if r % 2 == 0 else methods[::-1]
            if "rm" in sections:
                for m in order:
                    with _section(results, f"rm-{m}-{r}", dev, args.json):
                        results.setdefault("rm", []).append(rm_case(m, ctx) | {"round": r})
            if "rl" in sections:
                cases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                    ("ours-grpo", lambda: rl_ours("grpo", ctx)),
                    ("ours-rloo", lambda: rl_ours("rloo", ctx)),
                ]
                if not args.skip_trl:
                    cases.insert(1, ("trl-grpo", lambda: rl_trl(ctx)))
                for name, fn in cases if r % 2 == 0 else cases[::-1]:
                    with _section(results, f"rl-{name}-{r}", dev, args.json):
                        results.setdefault("rl", []).append(fn() | {"round": r})
        if "label" in sections:
            with _section(results, "label", dev, args.json):
                results["label"] = label_cases(ctx)
        if "gen" in sections:
            with _section(results, "gen", dev, args.json):
                results["gen"] = gen_variants(ctx)
    results["summary"] = summarize(results)
    results["environment"]["load_avg_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    args = resolve_args(argv)
    results = run(args)
    if args.json:
        _write_json(args.json, results)
    print_table(results)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
