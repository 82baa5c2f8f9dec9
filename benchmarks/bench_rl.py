"""RL step throughput: rlaif_trainer's loop against TRL's GRPOTrainer, same model and settings, same run.

Both sides train the same LoRA adapter (same rank, targets, learning rate) on the same model with
GRPO (group-normalised advantages, one optimisation pass per batch, k3 KL with the same beta, the
reference being the adapter-disabled base), sample the same number of prompts x completions per
step at the same temperature and length limit, and get the same rule-based reward (brevity, from
``rlaif_trainer.feedback.rules``), so the comparison is of the RL machinery, not of a reward model.

Both sides sample from the same prompts in the same order (TRL's dataset is the sequence ours
draws, step by step). Reported per side (the first ``--warmup`` steps excluded): mean step time,
its split into generation and the rest (reward + reference + policy forward/backward + optimizer),
and generated tokens per second of step time. Generation is timed over the same window on both
sides, the call that samples a batch (ours: ``modeling.generation.generate``, which also tokenizes
the prompts and decodes the responses; TRL: the model's ``generate``, without TRL's tokenizing and
decoding), in wall time and in CPU time of the calling thread (``time.thread_time``: on a shared
machine, with ``OMP_NUM_THREADS=1``, the work the call did, which other processes do not inflate
the way they inflate wall time). ``--rounds`` runs the sides alternately (ours, TRL, TRL, ours, ...)
and gives the ratio of each round, so that a load change between the two sides shows as spread.

    python benchmarks/bench_rl.py                      # tiny random Llama (built locally), 8 steps
    python benchmarks/bench_rl.py --model embedded:smollm2-135m-instruct --steps 4 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Summarize: The city council approved a new park near the river on Monday.",
    "Explain why the sky is blue.",
    "Give me a recipe for pancakes.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Is the response helpful, honest and harmless?",
    "Summarize: A good summary captures the most important points of the original text.",
    "The quick brown fox jumps over the lazy dog. Explain the sentence.",
]


def _reward_text(text: str) -> float:
    from rlaif_trainer.feedback.rules import brevity_score

    return brevity_score("", text)


def _model_path(name: str, workdir: Path) -> str:
    if name == "tiny":
        from rlaif_trainer.testing import build_tiny_model

        return str(build_tiny_model(workdir / "tiny"))
    return name


def _ours_config(args: argparse.Namespace, model_path: str, workdir: Path) -> Any:
    from rlaif_api import RLAIFJob, resolve_stage_configs

    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "policy": {
                    "model": model_path,
                    "lora": {
                        "r": args.lora_r,
                        "alpha": 2 * args.lora_r,
                        "dropout": 0.0,
                        "targetModules": ["q_proj", "v_proj"],
                    },
                },
                "dataset": {"prompts": str(prompts), "evalPrompts": str(prompts)},
                "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
                "rl": {
                    "algorithm": "grpo",
                    "reward": "direct",
                    "steps": args.steps,
                    "batchSize": args.batch_size,
                    "samplesPerPrompt": args.k,
                    "maxNewTokens": args.max_new_tokens,
                    "temperature": 0.9,
                    "learningRate": args.lr,
                    "klCoef": args.beta,
                    "ppoEpochs": 1,
                    "checkpointEvery": 10_000,
                },
                "stages": ["rl"],
                "seed": 0,
            },
        }
    )
    return resolve_stage_configs(job, workdir / "ws")["rl"]


def ours_prompt_order(args: argparse.Namespace, model_path: str, workdir: Path) -> list[str]:
    """The prompts ours samples at each step, each once, in order (TRL repeats each k times itself):
    ours' ``prompts_for_step`` on just the state it reads, without building a policy."""
    from types import SimpleNamespace

    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    cfg = loop_config(_ours_config(args, model_path, workdir))
    state = SimpleNamespace(
        train_prompts=list(cfg.train_prompts), config=cfg, seed=int(cfg.seed), rank=0, world=1
    )
    return [p for s in range(args.steps + 1) for p in RLTrainer.prompts_for_step(state, s)]  # type: ignore[arg-type]


def bench_ours(args: argparse.Namespace, model_path: str, workdir: Path) -> dict[str, Any]:
    import torch

    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    cfg = loop_config(_ours_config(args, model_path, workdir))
    model, tok = load_causal_lm(model_path, device="cpu", dtype=torch.float32)
    import rlaif_trainer.rl.loop as loop

    calls: list[tuple[float, float]] = []
    original_generate = loop.generate

    def timed_generate(*a: Any, **k: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return original_generate(*a, **k)
        finally:
            calls.append((time.perf_counter() - t0, time.thread_time() - c0))

    loop.generate = timed_generate  # type: ignore[assignment]
    trainer = RLTrainer(
        cfg,
        model=model,
        tokenizer=tok,
        reward_fn=lambda p, r: [_reward_text(x) for x in r],
        progress=False,
        device="cpu",
        work_dir=workdir / "ours",
    )
    try:
        rows = trainer.train()
    finally:
        loop.generate = original_generate  # type: ignore[assignment]
    rows = rows[args.warmup :]
    step = [r["step_time_s"] for r in rows]
    gen = [r["gen_time_s"] for r in rows]
    tokens = [r["tokens"] for r in rows]
    measured = calls[args.warmup :]
    return {
        "steps_measured": len(rows),
        "step_s": statistics.mean(step),
        "generation_s": statistics.mean(gen),
        "generate_call_wall_s": statistics.mean(c[0] for c in measured),
        "generate_call_cpu_s": statistics.mean(c[1] for c in measured),
        "other_s": statistics.mean(s - g for s, g in zip(step, gen, strict=True)),
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": sum(tokens) / sum(step),
        "final_reward": rows[-1]["reward"] if rows else None,
    }


def bench_trl(args: argparse.Namespace, model_path: str, workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlaif_trainer.modeling.loading import load_causal_lm

    model, tok = load_causal_lm(model_path, device="cpu", dtype=torch.float32)
    order = ours_prompt_order(args, model_path, workdir)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in order]})

    def reward(completions, **_: Any) -> list[float]:
        out = []
        for c in completions:
            text = c[-1]["content"] if isinstance(c, list) else str(c)
            out.append(_reward_text(text))
        return out

    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=args.batch_size * args.k,
        num_generations=args.k,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens,
        temperature=0.9,
        learning_rate=args.lr,
        beta=args.beta,
        num_iterations=1,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_dropout=True,
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
        # TRL's default trades ~20% compute for memory; ours does not, so compare like with like.
        gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    peft_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    step_times: list[float] = []
    gen_times: list[float] = []
    lengths: list[float] = []
    rewards: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()
            gen_times.append(0.0)

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))
                rewards.append(float(logs.get("reward", float("nan"))))

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    inner = trainer.model
    original = inner.generate

    cpu_times: list[float] = []

    def timed_generate(*a: Any, **k: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return original(*a, **k)
        finally:
            cpu_times.append(time.thread_time() - c0)
            if gen_times:
                gen_times[-1] += time.perf_counter() - t0

    inner.generate = timed_generate
    trainer.train()
    w = args.warmup
    step, gen = step_times[w:], gen_times[w : len(step_times)]
    n_seq = args.batch_size * args.k
    tokens = [length * n_seq for length in lengths[w : len(step_times)]]
    return {
        "steps_measured": len(step),
        "step_s": statistics.mean(step),
        "generation_s": statistics.mean(gen),
        "generate_call_wall_s": statistics.mean(gen),
        "generate_call_cpu_s": statistics.mean(cpu_times[w : len(step_times)]),
        "other_s": statistics.mean(s - g for s, g in zip(step, gen, strict=True)),
        "tokens_per_step": statistics.mean(tokens) if tokens else None,
        "tokens_per_s": sum(tokens) / sum(step) if tokens else None,
        "final_reward": rewards[-1] if rewards else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (a local random Llama), a model dir, or embedded:smollm2-135m-instruct",
    )
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per side (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="first steps left out of the averages (default 2)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length limit (default 32)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient (default 0.05)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="leave TRL's gradient checkpointing on (its default); off by default here, like rlaif_trainer",
    )
    parser.add_argument("--skip-trl", action="store_true", help="only measure rlaif_trainer")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating rounds of both sides (default 2: ours, TRL, TRL, ours)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_path = _model_path(args.model, workdir)
        results: dict[str, Any] = {
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "load_avg_at_start": os.getloadavg(),
            },
        }
        import trl

        results["trl_version"] = trl.__version__
        results["rounds"] = []
        for r in range(args.rounds):
            sides = ["rlaif_trainer"] + ([] if args.skip_trl else ["trl_grpo"])
            got: dict[str, Any] = {}
            for side in sides if r % 2 == 0 else sides[::-1]:
                work = workdir / f"round{r}-{side}"
                work.mkdir()
                bench = bench_ours if side == "rlaif_trainer" else bench_trl
                got[side] = bench(args, model_path, work) | {"load_avg": os.getloadavg()[0]}
            if "trl_grpo" in got:
                ours, theirs = got["rlaif_trainer"], got["trl_grpo"]
                got["ratios_ours_over_trl"] = {
                    "tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
                    "generation_speed_wall": theirs["generate_call_wall_s"] / ours["generate_call_wall_s"],
                    "generation_speed_cpu": theirs["generate_call_cpu_s"] / ours["generate_call_cpu_s"],
                }
            results["rounds"].append(got)
        results["machine"]["load_avg_at_end"] = os.getloadavg()

    head = f"{'round side':22} {'step s':>7} {'gen s':>7} {'other s':>7} {'tok/s':>8} {'call wall':>9} {'call cpu':>9} {'load':>5}"
    print(head)
    for r, got in enumerate(results["rounds"]):
        for name in ("rlaif_trainer", "trl_grpo"):
            x = got.get(name)
            if x:
                print(
                    f"{r} {name:20} {x['step_s']:7.3f} {x['generation_s']:7.3f} {x['other_s']:7.3f} "
                    f"{(x['tokens_per_s'] or 0):8.1f} {x['generate_call_wall_s']:9.4f} "
                    f"{x['generate_call_cpu_s']:9.4f} {x['load_avg']:5.1f}"
                )
        if "ratios_ours_over_trl" in got:
            q = got["ratios_ours_over_trl"]
            print(
                f"{r} ours / TRL: tokens/s {q['tokens_per_s']:.2f}x, generation speed "
                f"{q['generation_speed_wall']:.2f}x (wall) {q['generation_speed_cpu']:.2f}x (CPU)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
