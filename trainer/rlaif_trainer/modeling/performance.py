"""The GPU performance options the stages share, each a small function so that its device and
dtype logic is tested on the CPU (tests/unit/trainer/modeling/test_performance.py).

* :func:`adamw_kwargs`: the fused AdamW kernel on CUDA (one kernel for all parameters instead of a
  few per tensor); on the CPU the default implementation, so CPU runs keep their seeded results
  bit for bit;
* :func:`enable_gradient_checkpointing` and :func:`checkpointing`: activation checkpointing as an
  option (``rl.gradientCheckpointing``, ``rewardModel.gradientCheckpointing``): less activation
  memory for about one more forward pass of compute. HF's decoder layers checkpoint only while in
  training mode, and the RL policy runs in eval mode (no dropout: the sampling distribution is the
  one scored), so :func:`checkpointing` switches the checkpointing layers alone to training mode
  around the forward that records gradients; their dropout submodules stay in eval mode.

Precision, as the stages use it: frozen weights (the RL policy's base, which is also the KL
reference, and the labeler) are loaded in bf16 on a GPU (:func:`~rlaif_trainer.modeling.loading.default_dtype`);
trained weights stay fp32 (the LoRA adapters, which peft keeps in fp32 on a bf16 base, the value
head, the reward model's master weights), and the reward model's forward runs under bf16 autocast
(accelerate's ``mixed_precision="bf16"``). Log-probabilities are computed from fp32 logits.
Attention is PyTorch's SDPA (transformers' default), which picks the flash or memory-efficient
kernel on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["adamw_kwargs", "checkpointing", "enable_gradient_checkpointing"]


def adamw_kwargs(device: Any) -> dict[str, Any]:
    """Extra ``torch.optim.AdamW`` arguments for parameters on ``device``."""
    import torch

    return {"fused": True} if torch.device(device).type == "cuda" else {}


def enable_gradient_checkpointing(model: Any) -> None:
    """Turn on HF activation checkpointing (non-reentrant, which needs no input gradients and works
    under peft)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _checkpointing_layers(model: Any) -> list[Any]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]


@contextlib.contextmanager
def checkpointing(model: Any) -> Iterator[None]:
    """Within the block, the layers with checkpointing enabled checkpoint even if ``model`` is in
    eval mode; nothing else changes mode. A no-op when checkpointing is off."""
    layers = [m for m in _checkpointing_layers(model) if not m.training]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m in layers:
            m.training = False
