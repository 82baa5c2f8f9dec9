"""The RL stage: optimise a LoRA policy against the AI-feedback reward with a KL penalty.

One step (``rl.batch_size`` prompts across all processes, ``rl.samples_per_prompt`` samples each):

1. **generate** responses with the current policy (temperature ``rl.temperature``, top-p, at most
   ``rl.max_new_tokens`` new tokens, stopping at EOS);
2. **reward** each response: the reward model trained by the reward stage, or ``direct`` (d-RLAIF):
   the labeler LLM's score in [-1, 1];
3. **reference** log-probs from the same weights with the LoRA adapters disabled (one model copy);
4. **update** with the configured algorithm (see :mod:`rlaif_trainer.rl.losses` for the exact
   objective, advantages and KL estimator of each).

Reproducibility and restarts: prompts for step ``s`` are a deterministic function of ``(seed, s)``,
and so is every sampled response: sample ``i`` of the step (prompt-major, the ``k`` samples of a
prompt adjacent) draws its tokens from its own RNG seeded with ``(seed, s, i)`` (:func:`sample_seed`),
not from a per-process RNG. Every ``rl.checkpoint_every`` steps the main process writes a checkpoint
(adapter, value head, optimizer, every rank's RNG state) atomically; a restarted stage resumes from
the latest one (rank 0 picks it, every rank loads that one) and reproduces the same next step as an
uninterrupted run. ``metrics.jsonl`` gets one line per step (reward, KL, entropy, response length,
generation / reward / training time).

Data parallel (``accelerate launch`` on several GPUs or nodes): ``rl.batch_size`` is the global
batch; process ``r`` of ``W`` takes prompts ``r, r + W, …`` of it (so each prompt's samples stay on
one process, as RLOO's and GRPO's per-prompt baselines need), gradients are averaged across
processes (all-reduce) before every optimizer step, so the processes' weights stay identical, and
only the main process writes files. A step then computes what one process computes for the same
global batch and seed, up to floating-point summation order (tested across two gloo "nodes"):

* the samples are the same, because each sample's RNG depends on its index in the global batch,
  not on the process that draws it (a per-process RNG seeded with ``seed + rank`` drew different
  responses for every split of the batch; ``rl.generation: vllm`` still samples with the engine's
  per-process seed);
* every process holds ``batch_size / W`` prompts (a batch that does not divide is refused), so the
  mean of the processes' per-sample means is the global mean, for the losses and the logged metrics;
* token-weighted quantities (PPO's losses and advantage whitening, the logged entropy) divide by the
  token count summed over processes, not the process's own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlaif_trainer import metrics as prom
from rlaif_trainer.data.artifacts import partial_dir, trim_step_log
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.chat import format_prompts
from rlaif_trainer.modeling.generation import Generation, generate, response_logprobs
from rlaif_trainer.modeling.performance import adamw_kwargs, checkpointing, enable_gradient_checkpointing
from rlaif_trainer.modeling.vllm_engine import EngineRollout, GenerationEngine, VLLMEngine
from rlaif_trainer.rl import losses as alg
from rlaif_trainer.rl.algorithms import Rollout, build_algorithm
from rlaif_trainer.rl.config import LoraSettings, RLLoopConfig

log = logging.getLogger(__name__)

__all__ = ["RLLoopConfig", "RLTrainer", "RewardFactory", "RewardFn"]

RewardFn = Callable[[list[str], list[str]], list[float]]
#: ``(policy model, tokenizer, device) -> RewardFn``
RewardFactory = Callable[[Any, Any, torch.device], RewardFn]

#: Learning rate of the value head (a linear probe on the policy's detached final hidden states).
VALUE_HEAD_LR = 1e-3
#: Gradient-norm clip.
MAX_GRAD_NORM = 1.0
#: Checkpoints kept on disk.
KEEP_CHECKPOINTS = 2


# --------------------------------------------------------------------------------------------------
# distributed helpers (plain torch.distributed; a no-op in a single process)
# --------------------------------------------------------------------------------------------------


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean_(tensors: list[torch.Tensor], world: int) -> None:
    if world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def _all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """The sum of ``t`` over processes (a detached copy; ``t`` itself in a single process)."""
    if world <= 1:
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out)
    return out


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world <= 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------------
# reward sources
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------


def headline_window(steps: int) -> int:
    """Steps averaged at each end for the initial and final reward: a quarter of the run, 1 to 10."""
    return max(1, min(10, steps // 4)) if steps else 0


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def sample_seed(seed: int, step: int, index: int) -> int:
    """The RNG seed of sample ``index`` (its position in step ``step``'s global batch, prompt-major).

    A function of the global position only, so that however a step's batch is split over processes
    (or grouped into generation batches), each sample is drawn from the same RNG stream; numpy's
    SeedSequence mixes the three numbers so that nearby seeds, steps and indices give unrelated
    streams.
    """
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, dtype=np.uint64)[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class RLTrainer:
    """Holds the policy, its optimizer and the reward source for one RL stage run.

    ``config`` is the loop's own :class:`~rlaif_trainer.rl.config.RLLoopConfig` (the ``rl`` stage
    builds it from its resolved config). ``model``/``tokenizer`` may be injected (tests, benchmarks);
    by default the policy is loaded from ``config.policy_model``. The reward is ``reward_fn``, or
    ``reward_factory(model, tokenizer, device)`` called once the policy exists (so that a reward can
    share its weights). ``work_dir`` holds checkpoints and metrics until the stage finishes.
    """

    def __init__(
        self,
        config: RLLoopConfig,
        *,
        model=None,
        tokenizer=None,
        reward_fn: RewardFn | None = None,
        reward_factory: RewardFactory | None = None,
        generation_engine: GenerationEngine | None = None,
        work_dir: str | Path | None = None,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.rank, self.world = (
            (torch.distributed.get_rank(), torch.distributed.get_world_size()) if _dist() else (0, 1)
        )
        self.is_main = self.rank == 0
        self.seed = int(config.seed)
        self.work_dir = Path(work_dir) if work_dir else partial_dir(Path(config.output_dir))
        self.ckpt_dir = self.work_dir / "checkpoints"
        self.metrics_path = self.work_dir / "metrics.jsonl"
        self.algorithm = self.config.algorithm
        self.k = self.config.samples_per_prompt
        self.strategy = build_algorithm(
            self.algorithm,
            k=self.k,
            kl_coef=self.config.kl_coef,
            clip_range=self.config.clip_range,
            ppo_epochs=self.config.ppo_epochs,
        )
        self.kl_estimator = self.strategy.kl_estimator
        if self.k < self.strategy.min_samples_per_prompt:
            raise BadInputError(
                f"rl.samplesPerPrompt must be >= {self.strategy.min_samples_per_prompt} for {self.algorithm}"
            )

        self.train_prompts = list(config.train_prompts)
        if config.batch_size % self.world:
            # Unequal shares would weight the processes' mean gradients (and metrics) unequally.
            raise BadInputError(
                f"rl.batchSize={config.batch_size} must be a multiple of the {self.world} data-parallel "
                "processes (nodes x GPUs per node), so that every process samples as many prompts"
            )

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and self.world > 1:  # one GPU per process under accelerate launch
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.device = torch.device(device)

        _seed_everything(self.seed + self.rank)
        if model is None or tokenizer is None:
            from rlaif_trainer.modeling.loading import load_causal_lm

            model, tokenizer = load_causal_lm(self.config.policy_model, device=str(self.device))
        self.tokenizer = tokenizer
        self.model = self._with_lora(model).to(self.device)
        self.model.eval()  # no dropout: the sampling distribution is the one being scored
        if self.config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        hidden = self.model.get_input_embeddings().weight.shape[1]
        # Zero-initialised; seeded identically on every rank.
        self.value_head = torch.nn.Linear(hidden, 1).to(self.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.lora_params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.lora_params:
            raise RuntimeError("the policy has no trainable (LoRA) parameters")
        self.optimizer = torch.optim.AdamW(
            [
                {"params": self.lora_params, "lr": self.config.learning_rate},
                {"params": list(self.value_head.parameters()), "lr": VALUE_HEAD_LR},
            ],
            weight_decay=0.0,
            **adamw_kwargs(self.device),
        )
        # rl.generation: vllm samples through a colocated engine that is sent the policy's weights
        # before each rollout that follows an update; ``generation_engine`` injects one (tests).
        self.engine: EngineRollout | None = None
        if self.config.generation == "vllm":
            if generation_engine is None:
                generation_engine = VLLMEngine(
                    self.config.policy_model,
                    seed=self.seed + self.rank,
                    gpu_memory_utilization=self.config.vllm_gpu_memory_utilization,
                )
            self.engine = EngineRollout(generation_engine)
        if reward_fn is None:
            if reward_factory is None:
                raise ValueError("RLTrainer needs a reward_fn or a reward_factory")
            # Built after the policy, so that a reward sharing the policy's weights can use them.
            reward_fn = reward_factory(self.model, self.tokenizer, self.device)
        self.reward_fn = reward_fn
        self.step = 0
        self.resumed_from: int | None = None
        self._bias_settled = False

    # -- model ----------------------------------------------------------------------------------

    def _with_lora(self, model):
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            return model
        lora = self.config.lora or LoraSettings()
        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        # LoRA's B matrices start at zero, so the policy equals the reference at step 0 on every
        # rank; the A matrices are random, so seed them identically everywhere.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return get_peft_model(model, cfg)

    # -- data -----------------------------------------------------------------------------------

    def prompts_for_step(self, step: int) -> list[str]:
        """This process's prompts for ``step``: a seeded permutation per epoch, sliced by rank."""
        n, B = len(self.train_prompts), self.config.batch_size
        out: list[str] = []
        for j in range(step * B, (step + 1) * B):
            epoch, pos = divmod(j, n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g)
            out.append(self.train_prompts[int(perm[pos])])
        return out[self.rank :: self.world]

    def sample_generators(self, step: int) -> list[torch.Generator]:
        """One RNG per sample this process draws at ``step``, seeded by the sample's global index."""
        prompts = range(self.rank, self.config.batch_size, self.world)  # as prompts_for_step slices
        return [
            torch.Generator(device=self.device).manual_seed(sample_seed(self.seed, step, i * self.k + j))
            for i in prompts
            for j in range(self.k)
        ]

    # -- one step ---------------------------------------------------------------------------------

    def forward(self, gen: Generation, *, with_hidden: bool, with_entropy: bool = False):
        # checkpointing(): with rl.gradientCheckpointing the decoder layers recompute in the
        # backward although the policy stays in eval mode; without it, a no-op.
        with checkpointing(self.model):
            return response_logprobs(
                self.model,
                gen.query_ids,
                gen.query_mask,
                gen.response_ids,
                gen.response_mask,
                temperature=self.config.temperature,
                with_entropy=with_entropy,
                with_hidden=with_hidden,
            )

    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the data-parallel processes (detached)."""
        return _all_reduce_sum(t, self.world)

    def optimizer_step(self) -> float:
        params = self.lora_params + list(self.value_head.parameters())
        if self._bias_settled:  # see train_step; on every rank, so the all-reduced lists match
            self.value_head.bias.grad = None
            self._bias_settled = False
        grads = [p.grad for p in params if p.grad is not None]
        _all_reduce_mean_(grads, self.world)
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def rollout(self, step: int) -> tuple[list[str], Generation, torch.Tensor, dict[str, float]]:
        raw = self.prompts_for_step(step)
        raw_k = [p for p in raw for _ in range(self.k)]
        formatted = format_prompts(self.tokenizer, raw_k)
        t0 = time.perf_counter()
        if self.engine is not None:
            # The step number counts the updates made so far: the engine is re-sent the weights
            # only when it moved (also after a resume, when it has none yet).
            gen = self.engine.generate(
                self.model,
                self.tokenizer,
                formatted,
                version=step,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                device=self.device,
            )
        else:
            gen = generate(
                self.model,
                self.tokenizer,
                formatted,
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                max_prompt_tokens=None,
                device=self.device,
                generators=self.sample_generators(step),
            )
        too_long = int(gen.query_mask.sum(dim=1).max())
        if too_long > self.config.max_prompt_length:
            raise BadInputError(
                f"{self.config.prompts_source}: a prompt is {too_long} tokens, longer than "
                f"policy.maxPromptLength={self.config.max_prompt_length}"
            )
        t1 = time.perf_counter()
        scores = torch.tensor(self.reward_fn(raw_k, gen.texts), dtype=torch.float32, device=self.device)
        t2 = time.perf_counter()
        return raw_k, gen, scores, {"gen_time_s": t1 - t0, "reward_time_s": t2 - t1}

    def train_step(self, step: int) -> dict[str, Any]:
        """Run step ``step`` (0-based) and return its metrics (averaged over processes)."""
        t_start = time.perf_counter()
        _, gen, scores, timing = self.rollout(step)
        t_train0 = time.perf_counter()
        mask = gen.response_mask
        beta = self.config.kl_coef
        with torch.no_grad(), self.model.disable_adapter():
            ref_logp, _, _ = self.forward(gen, with_hidden=False)

        logp, entropy, hidden = self.forward(gen, with_hidden=True, with_entropy=True)
        assert entropy is not None and hidden is not None
        kl_seq = alg.kl_k1_per_token(logp.detach(), ref_logp, mask).sum(dim=1)
        returns = alg.regularized_return(scores, kl_seq, beta)
        if step == 0 and self.strategy.uses_value_head:
            # Start the learned baseline at the first batch's mean return (averaged over processes)
            # rather than 0, so the first updates are not one-sided.
            mean_ret = returns.mean().detach().double().reshape(1)
            _all_reduce_mean_([mean_ret], self.world)
            with torch.no_grad():
                self.value_head.bias.fill_(float(mean_ret))
            # That bias minimises this batch's value loss, so its gradient is zero up to rounding,
            # and AdamW's first step (g / |g|) would turn the rounding into a ±lr step of random
            # sign: a different baseline for every split of the batch over processes (and every
            # summation order), moving the next steps' REINFORCE / PPO losses by ~lr x the sequence
            # log-prob. The bias sits out the first update instead.
            self._bias_settled = True

        rollout = Rollout(gen, scores, ref_logp, logp, hidden, kl_seq, returns)
        update = self.strategy.update(rollout, self)
        t_end = time.perf_counter()

        n_tokens = float(mask.sum())
        # Token-weighted and spread metrics from sums over all processes, so that they do not
        # depend on how the batch is split (the others are per-sample means over equal shares).
        s = scores.detach().double()
        sums = self.global_sum(
            torch.stack(
                [(entropy.detach().double() * mask).sum(), mask.sum().double(), s.sum(), (s * s).sum()]
            )
        )
        n_samples = float(scores.numel() * self.world)
        reward_var = (
            (float(sums[3]) - float(sums[2]) ** 2 / n_samples) / (n_samples - 1) if n_samples > 1 else 0.0
        )
        local = {
            "reward": float(scores.mean()),
            "reward_std": math.sqrt(max(reward_var, 0.0)),
            "return": float(returns.mean()),
            "kl": update.pop("kl"),
            "entropy": float(sums[0]) / max(float(sums[1]), 1.0),
            "response_length": float(mask.sum(dim=1).mean()),
            "response_chars": float(np.mean([len(t) for t in gen.texts])),
            "loss": update.pop("loss"),
            **update,
        }
        timing["train_time_s"] = t_end - t_train0
        timing["step_time_s"] = t_end - t_start
        keys = sorted(local) + sorted(timing)
        vec = torch.tensor([local.get(k, timing.get(k, 0.0)) for k in keys] + [n_tokens], dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(vec)
            vec[:-1] /= self.world
        metrics: dict[str, Any] = {"step": step + 1}
        metrics.update({k: float(vec[i]) for i, k in enumerate(keys)})
        metrics["tokens"] = int(vec[-1])
        metrics["tokens_per_s"] = metrics["tokens"] / max(metrics["step_time_s"], 1e-9)
        metrics["kl_estimator"] = self.kl_estimator
        metrics["samples"] = len(gen.texts) * self.world
        metrics["example"] = {"response": gen.texts[0][:200], "reward": float(scores[0])}
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def save_checkpoint(self, step: int) -> Path | None:
        """Write checkpoint ``step`` (steps completed) from the main process; every rank must call it."""
        rng = _gather_objects(_rng_state(), self.world)
        path = self.ckpt_dir / f"step-{step:08d}"
        if self.is_main:
            tmp = self.ckpt_dir / f".tmp-step-{step:08d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save(
                {
                    "step": step,
                    "world_size": self.world,
                    "seed": self.seed,
                    "algorithm": self.algorithm,
                    "adapter": self._adapter_state(),
                    "value_head": self.value_head.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "rng": rng,
                },
                tmp / "state.pt",
            )
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            for old in sorted(self.ckpt_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("rl: checkpoint saved at step %d: %s", step, path)
        if self.world > 1:
            torch.distributed.barrier()
        return path if self.is_main else None

    def latest_checkpoint(self) -> Path | None:
        if not self.ckpt_dir.is_dir():
            return None
        done = sorted(p for p in self.ckpt_dir.glob("step-*") if (p / "state.pt").is_file())
        return done[-1] if done else None

    def load_checkpoint(self, path: Path) -> int:
        from peft import set_peft_model_state_dict

        state = torch.load(path / "state.pt", map_location=self.device, weights_only=False)
        set_peft_model_state_dict(self.model, state["adapter"])
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["world_size"] == self.world:
            _set_rng_state(state["rng"][self.rank])
        else:
            log.warning(
                "checkpoint was written by %d processes, now %d: reseeding sampling RNGs",
                state["world_size"],
                self.world,
            )
            _seed_everything(self.seed + 7919 * int(state["step"]) + self.rank)
        self.step = int(state["step"])
        self.resumed_from = self.step
        return self.step

    # -- the loop ---------------------------------------------------------------------------------

    def _trim_metrics(self, upto: int) -> None:
        if self.is_main:
            trim_step_log(self.metrics_path, upto)

    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Resume from the latest checkpoint if any, then run steps up to ``until`` (default ``rl.steps``)."""
        total = self.config.steps if until is None else min(until, self.config.steps)
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.world > 1:
            torch.distributed.barrier()
        # Rank 0 alone looks for a checkpoint (it alone writes them) and tells the others which one,
        # so every rank resumes from the same step even if a listing of the shared volume lags.
        ckpt = self.latest_checkpoint() if self.is_main else None
        if self.world > 1:
            box = [None if ckpt is None else str(ckpt)]
            torch.distributed.broadcast_object_list(box, src=0)
            ckpt = None if box[0] is None else Path(box[0])
        if ckpt is not None and self.resumed_from is None:
            self.load_checkpoint(ckpt)
            log.info("rl: resumed from %s (step %d)", ckpt, self.step)
        self._trim_metrics(self.step)
        if self.is_main:
            prom.record_progress(self.step / max(total, 1))
            log.info(
                "rl: algorithm=%s reward=%s kl_estimator=%s beta=%s steps=%d batch=%d x k=%d processes=%d",
                self.algorithm,
                self.config.reward,
                self.kl_estimator,
                self.config.kl_coef,
                total,
                self.config.batch_size,
                self.k,
                self.world,
            )
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.step, desc=f"rl ({self.algorithm})", unit="step")
        history: list[dict[str, Any]] = []
        while self.step < total:
            metrics = self.train_step(self.step)
            self.step += 1
            history.append(metrics)
            if self.is_main:
                with self.metrics_path.open("a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                prom.record_step(
                    samples=metrics["samples"],
                    seconds=metrics["step_time_s"],
                    tokens=metrics["tokens"],
                    loss=metrics["loss"],
                    reward=metrics["reward"],
                    kl=metrics["kl"],
                    progress=self.step / total,
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward']:.3f}",
                    kl=f"{metrics['kl']:.3f}",
                    len=f"{metrics['response_length']:.0f}",
                )
            if self.step % self.config.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint(self.step)
            for key in ("reward", "kl", "loss"):
                if not math.isfinite(metrics[key]):
                    raise RuntimeError(f"rl: {key} is {metrics[key]} at step {self.step}")
        if bar is not None:
            bar.close()
        return history

    def replicas_in_sync(self) -> bool:
        """Whether every process holds the same trainable weights (a collective: call on every rank)."""
        params = self.lora_params + list(self.value_head.parameters())
        vec = torch.stack(
            [
                torch.cat([p.detach().double().reshape(-1) for p in params]).sum(),
                torch.cat([p.detach().double().reshape(-1) for p in params]).abs().sum(),
            ]
        )
        gathered = _gather_objects(vec.cpu().tolist(), self.world)
        return all(g == gathered[0] for g in gathered)

    def all_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def summary(self, wall_s: float) -> dict[str, Any]:
        rows = self.all_metrics()
        # The same number of steps at each end, so initial and final are means over as many samples.
        m = headline_window(len(rows))
        head, tail = rows[:m], rows[-m:] if rows else []

        def mean(key: str, rs=tail) -> float | None:
            vals = [r[key] for r in rs if key in r]
            return float(np.mean(vals)) if vals else None

        gen_t = sum(r["gen_time_s"] for r in rows)
        train_t = sum(r["train_time_s"] for r in rows)
        rew_t = sum(r["reward_time_s"] for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        return {
            "stage": "rl",
            "algorithm": self.algorithm,
            "reward_source": self.config.reward,
            "kl_estimator": self.kl_estimator,
            "kl_coef": self.config.kl_coef,
            "steps": len(rows),
            "processes": self.world,
            "initial_reward": mean("reward", head),
            "headline_steps": m,
            "final_reward": mean("reward"),
            "final_kl": mean("kl"),
            "final_entropy": mean("entropy"),
            "final_response_length": mean("response_length"),
            "initial_response_length": mean("response_length", head),
            "tokens_per_s": tokens / max(gen_t + train_t + rew_t, 1e-9),
            "generation_s": round(gen_t, 3),
            "reward_s": round(rew_t, 3),
            "training_s": round(train_t, 3),
            "resumed_from_step": self.resumed_from,
            "wall_s": round(wall_s, 3),
        }

    def save_final(self, out_dir: Path, summary: dict[str, Any]) -> None:
        """Write the adapter, metrics and summary into ``out_dir`` (main process only)."""
        self.model.save_pretrained(out_dir / "adapter")
        torch.save(self.value_head.state_dict(), out_dir / "value_head.pt")
        if (
            self.metrics_path.exists()
            and self.metrics_path.resolve() != (out_dir / "metrics.jsonl").resolve()
        ):
            shutil.copyfile(self.metrics_path, out_dir / "metrics.jsonl")
        (out_dir / "policy.json").write_text(
            json.dumps(
                {
                    "base_model": self.config.policy_model,
                    "adapter": "adapter",
                    "algorithm": self.algorithm,
                    "reward": self.config.reward,
                    "steps": summary["steps"],
                },
                indent=2,
            )
        )
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
