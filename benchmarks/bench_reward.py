"""Reward-model training throughput and peak memory: ours against TRL's ``RewardTrainer``, same run.

Both train ``AutoModelForSequenceClassification`` (one output) from the same checkpoint on the same
hard-labelled pairs, tokenized identically (our chat-template encoding, handed to TRL pre-tokenized
as ``chosen_ids``/``rejected_ids``), with the same batch size, learning rate, AdamW and precision:

* **ours**: :func:`rlaif_trainer.reward_model.training.train_reward_model` with ``loss="bradleyTerry"``
  (dynamic padding, length-grouped batches);
* **trl-matched**: ``trl.RewardTrainer`` with gradient checkpointing off and fp32 on the CPU
  (bf16 mixed precision on a GPU, like ours);
* **trl-default**: ``trl.RewardTrainer`` with its defaults (gradient checkpointing on).

Each configuration runs in its own subprocess (so peak memory is its own: VmHWM on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU), and the configurations alternate over ``--rounds``
so that all see the same load on a shared machine. Throughput is steady-state: pairs per second
from the end of the first optimizer step to the end of the last.

    python benchmarks/bench_reward.py --steps 6 --batch-size 8 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Hard-labelled pairs: prompts of 5-40 words, responses of 8-120 (the shorter preferred)."""
    from rlaif_trainer.testing import synthetic_pairs

    return synthetic_pairs(n, prompt_words=(5, 40), response_words=(8, 120), seed=seed)


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> dict:
    import torch

    from rlaif_trainer.modeling.loading import load_reward_model

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    torch.manual_seed(0)
    model, tok = load_reward_model(args.model, device=args.device, dtype=torch.float32)
    pairs = make_pairs(args.pairs)
    stamps: list[float] = []
    n_steps = args.steps
    if args.method == "ours":
        from accelerate import Accelerator

        from rlaif_trainer.reward_model.training import train_reward_model

        acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
        train_reward_model(
            model,
            tok,
            pairs,
            loss="bradleyTerry",
            epochs=100,
            learning_rate=1e-5,
            batch_size=args.batch_size,
            max_length=args.max_length,
            max_steps=n_steps,
            accelerator=acc,
            progress=False,
            on_step=lambda s, v: stamps.append(time.perf_counter()),
        )
    else:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import RewardConfig, RewardTrainer

        from rlaif_trainer.testing import trl_preference_rows

        rows = trl_preference_rows(tok, pairs, args.max_length)
        ds = Dataset.from_list(rows)

        class Stamp(TrainerCallback):
            def on_step_end(self, *a, **k):  # type: ignore[no-untyped-def]
                stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as out:
            cfg = RewardConfig(
                output_dir=out,
                per_device_train_batch_size=args.batch_size,
                max_steps=n_steps,
                learning_rate=1e-5,
                logging_steps=10_000,
                save_strategy="no",
                report_to=[],
                max_length=args.max_length + 8,
                gradient_checkpointing=(args.method == "trl-default"),
                bf16=cuda if args.method == "trl-matched" else None,
                use_cpu=not cuda,
                dataloader_num_workers=0,
                seed=0,
                disable_tqdm=True,
            )
            trainer = RewardTrainer(
                model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Stamp()]
            )
            trainer.train()
    if len(stamps) < 2:
        raise RuntimeError("need at least 2 steps")
    steady = (len(stamps) - 1) * args.batch_size / (stamps[-1] - stamps[0])
    return {
        "method": args.method,
        "pairs_per_s": steady,
        "peak_mem_mb": _peak_mem_mb(args.device),
        "steps": len(stamps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model name or path")
    ap.add_argument("--pairs", type=int, default=64, help="hard-labelled pairs in the dataset")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per configuration")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of all configurations")
    ap.add_argument(
        "--methods", default="ours,trl-matched,trl-default", help="comma-separated configurations"
    )
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.method:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    results: dict[str, list[dict]] = {m: [] for m in args.methods.split(",")}
    for _ in range(args.rounds):
        for m in results:
            cmd = [
                sys.executable,
                __file__,
                "--method",
                m,
                "--model",
                args.model,
                "--pairs",
                str(args.pairs),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
            ]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{m} failed with code {proc.returncode}")
            results[m].append(json.loads(line[7:]))
            print(m, results[m][-1], flush=True)
    summary = {
        m: {
            "pairs_per_s": round(sum(r["pairs_per_s"] for r in rs) / len(rs), 3),
            "peak_mem_mb": round(max(r["peak_mem_mb"] for r in rs), 1),
        }
        for m, rs in results.items()
    }
    out = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "pairs": args.pairs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "rounds": args.rounds,
        "results": summary,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    if "ours" in summary:
        for m in summary:
            if m != "ours":
                out[f"speedup_vs_{m}"] = round(summary["ours"]["pairs_per_s"] / summary[m]["pairs_per_s"], 2)
                out[f"memory_ratio_vs_{m}"] = round(
                    summary["ours"]["peak_mem_mb"] / summary[m]["peak_mem_mb"], 2
                )
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
