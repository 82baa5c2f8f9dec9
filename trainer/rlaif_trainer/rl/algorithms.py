"""One strategy class per RL algorithm: REINFORCE with a learned baseline, RLOO, GRPO and PPO.

Each declares the KL estimator it optimises (and logs), whether it learns from the value head, the
fewest samples per prompt it can work with, and ``update(rollout, learner) -> metrics``: the loss
and optimizer steps for one batch of sampled responses. The math is in :mod:`.losses`; the loop
(:mod:`.loop`) samples, scores and computes the reference log-probabilities, and hands the result
over as a :class:`Rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from rlaif_trainer.modeling.generation import Generation
from rlaif_trainer.rl import losses as alg

__all__ = ["GRPO", "PPO", "RLOO", "Algorithm", "Learner", "Reinforce", "Rollout", "build_algorithm"]

#: Value-loss weight in the PPO/REINFORCE loss.
VALUE_COEF = 0.5
#: GAE parameters for PPO (γ = 1: the episode is one response).
GAE_GAMMA, GAE_LAMBDA = 1.0, 0.95


@dataclass
class Rollout:
    """One batch of sampled responses, scored, with the policy's and the reference's log-probs."""

    gen: Generation
    scores: torch.Tensor  # [B] reward per response
    ref_logp: torch.Tensor  # [B, R] under the reference (initial) policy
    logp: torch.Tensor  # [B, R] under the current policy, with gradients
    hidden: torch.Tensor  # [B, R, H] the states the value head reads
    kl_seq: torch.Tensor  # [B] sequence k1 estimate (detached)
    returns: torch.Tensor  # [B] KL-regularised returns

    @property
    def mask(self) -> torch.Tensor:
        return self.gen.response_mask


class Learner(Protocol):
    """What an algorithm needs from the loop: the value head, a fresh forward pass, an optimizer step."""

    @property
    def value_head(self) -> torch.nn.Module: ...

    def forward(
        self, gen: Generation, *, with_hidden: bool, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...

    def optimizer_step(self) -> float: ...

    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the data-parallel processes (``t`` in a single process)."""
        ...

    @property
    def world(self) -> int: ...


class Algorithm:
    """Base of the strategies; the hyperparameters are the ``rl`` spec's."""

    name: ClassVar[str]
    kl_estimator: ClassVar[str]
    uses_value_head: ClassVar[bool] = False  # a learned baseline or critic, started at the first mean return
    min_samples_per_prompt: ClassVar[int] = 1

    def __init__(self, *, k: int, kl_coef: float, clip_range: float, ppo_epochs: int) -> None:
        self.k, self.beta, self.clip_range, self.epochs = k, kl_coef, clip_range, ppo_epochs

    def update(self, r: Rollout, learner: Learner) -> dict[str, Any]:
        """Optimise on ``r``; return ``loss``, the logged ``kl`` and the algorithm's own metrics."""
        raise NotImplementedError


class Reinforce(Algorithm):
    """REINFORCE with a learned baseline (the paper's choice): advantage = return − V(prompt)."""

    name, kl_estimator, uses_value_head = "reinforce", "k1", True

    def update(self, r: Rollout, learner: Learner) -> dict[str, Any]:
        v = learner.value_head(r.hidden[:, 0].detach().float()).squeeze(-1)
        adv = alg.reinforce_advantages(r.returns, v)
        vloss = 0.5 * ((v - r.returns) ** 2).mean()
        loss = alg.pg_loss(r.logp, adv, r.mask) + VALUE_COEF * vloss
        loss.backward()
        grad_norm = learner.optimizer_step()
        return {
            "loss": float(loss.detach()),
            "kl": float(r.kl_seq.mean()),
            "grad_norm": grad_norm,
            "value_loss": float(vloss.detach()),
        }


class RLOO(Algorithm):
    """REINFORCE leave-one-out: each sample's baseline is the mean return of the prompt's others."""

    name, kl_estimator, min_samples_per_prompt = "rloo", "k1", 2

    def update(self, r: Rollout, learner: Learner) -> dict[str, Any]:
        adv = alg.rloo_advantages(r.returns, self.k)
        loss = alg.pg_loss(r.logp, adv, r.mask)
        loss.backward()
        grad_norm = learner.optimizer_step()
        return {"loss": float(loss.detach()), "kl": float(r.kl_seq.mean()), "grad_norm": grad_norm}


class GRPO(Algorithm):
    """Group-normalised advantages, a clipped ratio over ``ppo_epochs`` passes, and the k3 KL in the loss."""

    name, kl_estimator, min_samples_per_prompt = "grpo", "k3", 2

    def update(self, r: Rollout, learner: Learner) -> dict[str, Any]:
        mask, logp = r.mask, r.logp
        adv = alg.grpo_advantages((1.0 - self.beta) * r.scores, self.k)
        old_logp = logp.detach()
        kl_logged = torch.zeros(())
        clip_fracs = []
        extra: dict[str, Any] = {}
        for epoch in range(self.epochs):
            if epoch > 0:
                logp, _, _ = learner.forward(r.gen, with_hidden=False)
            loss, kl3 = alg.grpo_loss(logp, old_logp, r.ref_logp, adv, mask, self.clip_range, self.beta)
            if epoch == 0:
                kl_logged = kl3.detach()
            ratio = torch.exp(logp.detach() - old_logp)
            clip_fracs.append(float(alg.masked_mean(((ratio - 1).abs() > self.clip_range).float(), mask)))
            loss.backward()
            extra["grad_norm"] = learner.optimizer_step()
        extra["clip_frac"] = float(np.mean(clip_fracs))
        return {"loss": float(loss.detach()), "kl": float(kl_logged), **extra}


class PPO(Algorithm):
    """PPO with a value head: per-token KL-shaped rewards, GAE, clipped policy and value losses."""

    name, kl_estimator, uses_value_head = "ppo", "k1", True

    def update(self, r: Rollout, learner: Learner) -> dict[str, Any]:
        mask, logp, hidden = r.mask, r.logp, r.hidden
        old_logp = logp.detach()
        old_values = learner.value_head(hidden.detach().float()).squeeze(-1).detach() * mask
        token_rewards = alg.ppo_token_rewards(r.scores, old_logp, r.ref_logp, mask, self.beta)
        adv, ret = alg.gae(token_rewards, old_values, mask, GAE_GAMMA, GAE_LAMBDA)
        # Token means over every process's tokens (data parallel): the advantages are whitened with
        # the global batch's statistics, and the losses divide by the global token count over the
        # number of processes, so the all-reduced mean gradient is the one-process gradient.
        n_tokens = learner.global_sum(mask.sum().detach()).clamp(min=1.0)
        mean = learner.global_sum((adv * mask).sum()) / n_tokens
        var = learner.global_sum((((adv - mean) ** 2) * mask).sum()) / n_tokens
        adv = ((adv - mean) / torch.sqrt(var + 1e-8)) * mask
        per_process = n_tokens / learner.world
        clip_fracs, vlosses = [], []
        extra: dict[str, Any] = {}
        for epoch in range(self.epochs):
            if epoch > 0:
                logp, _, new_hidden = learner.forward(r.gen, with_hidden=True)
                assert new_hidden is not None
                hidden = new_hidden
            values = learner.value_head(hidden.detach().float()).squeeze(-1) * mask
            ploss, cf = alg.ppo_policy_loss(logp, old_logp, adv, mask, self.clip_range, per_process)
            vloss = alg.value_loss(values, old_values, ret, mask, self.clip_range, per_process)
            loss = ploss + VALUE_COEF * vloss
            loss.backward()
            extra["grad_norm"] = learner.optimizer_step()
            clip_fracs.append(float(cf.detach()))
            vlosses.append(float(vloss.detach()))
        extra["clip_frac"] = float(np.mean(clip_fracs))
        extra["value_loss"] = float(np.mean(vlosses))
        return {"loss": float(loss.detach()), "kl": float(r.kl_seq.mean()), **extra}


ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (Reinforce, RLOO, GRPO, PPO)}


def build_algorithm(name: str, *, k: int, kl_coef: float, clip_range: float, ppo_epochs: int) -> Algorithm:
    """The strategy for ``rl.algorithm``."""
    return ALGORITHMS[name](k=k, kl_coef=kl_coef, clip_range=clip_range, ppo_epochs=ppo_epochs)
