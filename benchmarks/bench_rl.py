"""RL step throughput: rlaif_trainer's loop against TRL's GRPOTrainer, same model and settings, same run.

Both sides train the same LoRA adapter (same rank, targets, learning rate) on the same model with
GRPO (group-normalised advantages, one optimisation pass per batch, k3 KL with the same beta, the
reference being the adapter-disabled base), sample the same number of prompts x completions per
step at the same temperature and length limit, and get the same rule-based reward (brevity, from
``rlaif_trainer.feedback.rules``), so the comparison is of the RL machinery, not of a reward model.

Reported per side (the first ``--warmup`` steps excluded): mean step time, its split into
generation and the rest (reward + reference + policy forward/backward + optimizer), and generated
tokens per second of step time. TRL's generation time is measured by timing its calls to the
model's ``generate``.

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


def bench_ours(args: argparse.Namespace, model_path: str, workdir: Path) -> dict[str, Any]:
    import torch

    from rlaif_api import RLAIFJob, resolve_stage_configs
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer

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
    cfg = resolve_stage_configs(job, workdir / "ws")["rl"]
    model, tok = load_causal_lm(model_path, device="cpu", dtype=torch.float32)
    trainer = RLTrainer(
        cfg,
        model=model,
        tokenizer=tok,
        reward_fn=lambda p, r: [_reward_text(x) for x in r],
        progress=False,
        device="cpu",
        work_dir=workdir / "ours",
    )
    rows = trainer.train()
    rows = rows[args.warmup :]
    step = [r["step_time_s"] for r in rows]
    gen = [r["gen_time_s"] for r in rows]
    tokens = [r["tokens"] for r in rows]
    return {
        "steps_measured": len(rows),
        "step_s": statistics.mean(step),
        "generation_s": statistics.mean(gen),
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
    n_rows = args.batch_size * (args.steps + 1)
    data = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n_rows)]}
    )

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

    def timed_generate(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
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
        results["rlaif_trainer"] = bench_ours(args, model_path, workdir)
        if not args.skip_trl:
            import trl

            results["trl_version"] = trl.__version__
            results["trl_grpo"] = bench_trl(args, model_path, workdir)
            ours, theirs = results["rlaif_trainer"], results["trl_grpo"]
            if ours["tokens_per_s"] and theirs["tokens_per_s"]:
                results["speedup_tokens_per_s"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
            results["speedup_step_time"] = theirs["step_s"] / ours["step_s"]
        results["machine"]["load_avg_at_end"] = os.getloadavg()

    print(f"{'':16} {'step s':>8} {'gen s':>8} {'other s':>8} {'tok/step':>9} {'tok/s':>8}")
    for name in ("rlaif_trainer", "trl_grpo"):
        r = results.get(name)
        if r:
            print(
                f"{name:16} {r['step_s']:8.3f} {r['generation_s']:8.3f} {r['other_s']:8.3f} "
                f"{(r['tokens_per_step'] or 0):9.1f} {(r['tokens_per_s'] or 0):8.1f}"
            )
    if "speedup_tokens_per_s" in results:
        print(f"rlaif_trainer / TRL tokens/s: {results['speedup_tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
