"""The RL algorithms' pure math: advantages, KL estimators and losses (torch only, no models).

Everything here works on padded tensors of shape ``[batch, response_len]`` with a float ``mask``
(1 for response tokens up to and including the first EOS, 0 after), so the training loop and the
unit tests share exactly the same code.

Objective (Lee et al. 2023, RLAIF vs. RLHF, §2.3 / eq. 4): the policy maximises

    J(θ) = E_x E_{y~π_θ(·|x)} [ (1−β)·r(x, y) − β·log(π_θ(y|x) / π_ref(y|x)) ]

with the reward ``r`` given at the final token and π_ref the initial policy (here: the same weights
with the LoRA adapters disabled). ``β`` is ``rl.kl_coef``.

KL estimators (the one that is optimised is the one that is logged as ``kl``):

* ``k1`` (``reinforce``, ``rloo``, ``ppo``): the sequence-level sample estimate
  ``KL ≈ Σ_t [log π_θ(y_t|·) − log π_ref(y_t|·)]`` over the sampled response, put into the return,
  as in the paper's objective. Its expectation under π_θ is the exact sequence KL.
* ``k3`` (``grpo``, following DeepSeekMath): the per-token, always non-negative estimator
  ``exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1``, averaged over each response's tokens and
  added to the loss with weight β (the reward is then not KL-shaped).
"""

from __future__ import annotations

import torch

__all__ = [
    "gae",
    "grpo_advantages",
    "grpo_loss",
    "kl_k1_per_token",
    "kl_k3_per_token",
    "masked_mean",
    "pg_loss",
    "ppo_policy_loss",
    "ppo_token_rewards",
    "regularized_return",
    "reinforce_advantages",
    "rloo_advantages",
    "token_mean",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def token_mean(
    x: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float | None = None
) -> torch.Tensor:
    """``Σ x·mask / normalizer``: :func:`masked_mean` when ``normalizer`` is ``None``.

    Data parallel: with ``normalizer`` = (tokens summed over the W processes) / W, the mean of the
    processes' values, and of their gradients, is the mean over every process's tokens, which a
    process's own :func:`masked_mean` is not when the processes hold different numbers of tokens.
    """
    if normalizer is None:
        return masked_mean(x, mask)
    return (x * mask).sum() / normalizer


def kl_k1_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``log π_θ − log π_ref`` (0 on padding)."""
    return (logp - ref_logp) * mask


def kl_k3_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator ``exp(ref−logp) − (ref−logp) − 1`` (≥ 0; 0 on padding)."""
    d = ref_logp - logp
    return (torch.exp(d) - d - 1.0) * mask


def regularized_return(scores: torch.Tensor, kl_seq: torch.Tensor, beta: float) -> torch.Tensor:
    """The paper's per-sequence return ``(1−β)·r − β·KL`` (KL: the k1 sequence sum)."""
    return (1.0 - beta) * scores - beta * kl_seq


def reinforce_advantages(returns: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline: ``A = R − b(x)`` (the baseline is a detached value estimate)."""
    return returns - baseline.detach()


def rloo_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = R_i − mean_{j≠i} R_j`` within each prompt's ``k`` samples.

    ``returns`` is flat ``[n_prompts * k]`` with the samples of one prompt contiguous.
    """
    if k < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    r = returns.view(-1, k)
    loo = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    return (r - loo).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: group-normalised advantages ``(r_i − mean(r)) / (std(r) + eps)`` per prompt.

    The standard deviation is the unbiased sample std of the group (as in DeepSeekMath / TRL).
    """
    if k < 2:
        raise ValueError("grpo needs at least 2 samples per prompt")
    r = scores.view(-1, k)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)
    return ((r - mean) / (std + eps)).reshape(-1)


def pg_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence-level score-function loss ``−mean_i A_i · Σ_t log π_θ(y_{i,t})``.

    Its gradient is the (baselined) REINFORCE estimate of ``−∇J``.
    """
    seq_logp = (logp * mask).sum(dim=1)
    return -(advantages.detach() * seq_logp).mean()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO loss: ``−1/G Σ_i 1/|o_i| Σ_t [min(ρ·A_i, clip(ρ, 1±ε)·A_i) − β·k3_t]``.

    Returns ``(loss, kl)`` where ``kl`` is the k3 estimate (mean over each response's tokens, then
    over responses) that the loss penalises.
    """
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach().unsqueeze(1)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * adv)
    k3 = kl_k3_per_token(logp, ref_logp.detach(), mask)
    per_token = surr - beta * k3
    per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    kl_seq = k3.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return -per_seq.mean(), kl_seq.mean()


def ppo_token_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token PPO rewards: ``−β·(log π − log π_ref)`` at every token plus ``(1−β)·r`` at the last one.

    Summed over a response this is exactly :func:`regularized_return`.
    """
    rewards = -beta * kl_k1_per_token(logp, ref_logp, mask)
    lengths = mask.sum(dim=1).long()
    last = (lengths - 1).clamp(min=0)
    idx = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[idx, last] += (1.0 - beta) * scores * (lengths > 0).to(scores.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    ``values[:, t]`` is V(s_t), the value before emitting token ``t``; the value after the last
    token is 0 (episode end). Returns ``(advantages, returns)`` with ``returns = advantages + values``,
    both 0 on padding.
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0.0)
        last = last * m
        adv[:, t] = last
    returns = (adv + values) * mask
    return adv, returns


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    normalizer: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate ``−E_t[min(ρ_t·A_t, clip(ρ_t, 1±ε)·A_t)]`` over all response tokens.

    Returns ``(loss, clip_fraction)``. ``normalizer`` divides the token sums instead of the mask's
    own count (see :func:`token_mean`).
    """
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * adv
    loss = -token_mean(torch.minimum(unclipped, clipped), mask, normalizer)
    clip_frac = token_mean(((ratio - 1.0).abs() > clip_range).to(logp.dtype), mask, normalizer)
    return loss, clip_frac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``½·E[(V − R)²]``, optionally with PPO's value clipping around the rollout's values
    (``normalizer``: see :func:`token_mean`)."""
    returns = returns.detach()
    err = (values - returns) ** 2
    if clip_range is not None:
        v_clip = old_values.detach() + torch.clamp(values - old_values.detach(), -clip_range, clip_range)
        err = torch.maximum(err, (v_clip - returns) ** 2)
    return 0.5 * token_mean(err, mask, normalizer)
