"""The RL loop's own settings: what :class:`rlaif_trainer.rl.loop.RLTrainer` reads, and nothing more.

The loop is a library: it does not know the job spec or the stage layer's resolved ``StageConfig``.
The ``rl`` stage (:mod:`rlaif_trainer.stages.rl`) builds an :class:`RLLoopConfig` from the stage
config (``loop_config``), so the import layering (stages over libraries) holds, and a benchmark or a
test can build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["LoraSettings", "RLLoopConfig"]


@dataclass(frozen=True)
class LoraSettings:
    """The policy's LoRA adapters (peft's ``LoraConfig``); the defaults apply when the job names none."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class RLLoopConfig:
    """One RL run: the policy, its training prompts, the algorithm's hyperparameters, where it writes.

    ``output_dir`` is the policy's artifact directory; the loop works in its ``.partial`` sibling.
    ``reward`` only names the reward source (in logs and the summary): the loop is handed the reward
    function itself. ``prompts_source`` names the prompt file in error messages.
    """

    policy_model: str
    train_prompts: tuple[str, ...]
    output_dir: Path
    seed: int
    algorithm: Literal["reinforce", "rloo", "grpo", "ppo"]
    reward: str
    steps: int
    batch_size: int
    samples_per_prompt: int
    kl_coef: float
    learning_rate: float
    temperature: float
    top_p: float
    max_new_tokens: int
    max_prompt_length: int
    ppo_epochs: int
    clip_range: float
    checkpoint_every: int
    gradient_checkpointing: bool = False
    generation: Literal["hf", "vllm"] = "hf"
    vllm_gpu_memory_utilization: float = 0.3
    lora: LoraSettings | None = None
    prompts_source: str = field(default="the prompts")
