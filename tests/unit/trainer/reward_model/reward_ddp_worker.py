"""Worker for the data-parallel reward test: trains the tiny reward model for a few steps and writes
the per-step global losses (rank 0). Run as ``accelerate launch --multi_gpu --num_processes N`` (gloo on CPU) or plain python."""

from __future__ import annotations

import json
import sys


def main(model_dir: str, out: str) -> None:
    import torch
    from accelerate import Accelerator

    from rlaif_trainer.modeling.loading import load_reward_model
    from rlaif_trainer.reward_model.training import train_reward_model

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model, tok = load_reward_model(model_dir, device="cpu", dtype=torch.float32)
    pairs = [
        {
            "prompt": f"question {i}",
            "response_a": "yes " * (1 + i % 4),
            "response_b": "no " * (1 + (i * 3) % 5),
            "p_a": [0.9, 0.2, 0.65, 0.4][i % 4],
        }
        for i in range(24)
    ]
    losses: list[float] = []
    metrics = train_reward_model(
        model,
        tok,
        pairs,
        pairs[:6],
        loss="soft",
        epochs=1,
        learning_rate=1e-3,
        batch_size=6,
        max_length=64,
        seed=1,
        accelerator=acc,
        progress=False,
        on_step=lambda s, v: losses.append(v),
    )
    if acc.is_main_process:
        with open(out, "w") as fh:
            json.dump(
                {
                    "losses": losses,
                    "processes": acc.num_processes,
                    "accuracy": metrics["accuracy"],
                    "eval_loss": metrics["eval_loss"],
                },
                fh,
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
