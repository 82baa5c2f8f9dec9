"""The RL algorithms' advantages, KL estimators and losses against hand computations."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlaif_trainer.rl import losses as alg  # noqa: E402


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_paper_return_is_one_minus_beta_reward_minus_beta_kl():
    # (1 - 0.1) * 1.0 - 0.1 * 2.0 = 0.7 ; (1 - 0.1) * -0.5 - 0.1 * 0 = -0.45
    out = alg.regularized_return(t([1.0, -0.5]), t([2.0, 0.0]), beta=0.1)
    assert torch.allclose(out, t([0.7, -0.45]))


def test_kl_estimators_by_hand():
    logp = t([[-1.0, -2.0, -3.0]])
    ref = t([[-1.5, -2.0, -1.0]])
    mask = t([[1.0, 1.0, 0.0]])
    k1 = alg.kl_k1_per_token(logp, ref, mask)
    assert torch.allclose(k1, t([[0.5, 0.0, 0.0]]))
    k3 = alg.kl_k3_per_token(logp, ref, mask)
    d = -0.5  # ref - logp at token 0
    assert torch.allclose(k3, t([[math.exp(d) - d - 1.0, 0.0, 0.0]]))
    assert (alg.kl_k3_per_token(t([[-0.3, -4.0]]), t([[-2.0, -0.1]]), t([[1.0, 1.0]])) >= 0).all()


def test_reinforce_advantage_subtracts_detached_baseline():
    returns = t([1.0, 0.0, 2.0])
    baseline = t([0.5, 0.5, 0.5]).requires_grad_(True)
    adv = alg.reinforce_advantages(returns, baseline)
    assert torch.allclose(adv, t([0.5, -0.5, 1.5]))
    assert not adv.requires_grad


def test_rloo_leave_one_out_by_hand():
    # prompt 1: returns 1, 2, 3 -> baselines (2+3)/2, (1+3)/2, (1+2)/2 ; prompt 2: all equal -> 0
    adv = alg.rloo_advantages(t([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), k=3)
    assert torch.allclose(adv, t([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        alg.rloo_advantages(t([1.0]), k=1)


def test_grpo_group_normalisation_by_hand():
    # group 1: mean 2, unbiased std 1 ; group 2: 0 and 4 -> mean 2, std sqrt(8)
    adv = alg.grpo_advantages(t([1.0, 2.0, 3.0, 0.0, 4.0, 2.0]), k=3, eps=0.0)
    s2 = math.sqrt(((0 - 2) ** 2 + (4 - 2) ** 2 + 0) / 2)
    assert torch.allclose(adv, t([-1.0, 0.0, 1.0, -2 / s2, 2 / s2, 0.0]))


def test_pg_loss_value_and_gradient():
    logp = t([[-1.0, -2.0, -7.0], [-0.5, -0.5, -0.5]]).requires_grad_(True)
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = t([2.0, -1.0])
    loss = alg.pg_loss(logp, adv, mask)
    # -(2 * (-3) + (-1) * (-1.5)) / 2 = -(-6 + 1.5) / 2 = 2.25
    assert math.isclose(float(loss.detach()), 2.25)
    loss.backward()
    assert torch.allclose(logp.grad, t([[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]))


def test_ppo_token_rewards_sum_to_the_paper_return():
    logp = t([[-1.0, -2.0, -1.0], [-0.5, -1.0, 0.0]])
    ref = t([[-1.2, -1.0, -3.0], [-0.5, -0.2, 0.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = t([0.8, -0.3])
    r = alg.ppo_token_rewards(scores, logp, ref, mask, beta=0.2)
    kl = alg.kl_k1_per_token(logp, ref, mask).sum(1)
    assert torch.allclose(r.sum(1), alg.regularized_return(scores, kl, 0.2))
    # The score lands on the last real token of each row, nothing on padding.
    assert float(r[1, 2]) == 0.0
    assert math.isclose(float(r[1, 1]), -0.2 * (-1.0 + 0.2) + 0.8 * -0.3)


def test_gae_monte_carlo_and_td0_by_hand():
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.5, 0.5]])
    mask = t([[1.0, 1.0, 1.0]])
    adv, ret = alg.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([[0.5, 0.5, 0.5]]))  # return-to-go 1 minus V
    assert torch.allclose(ret, t([[1.0, 1.0, 1.0]]))
    adv0, _ = alg.gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert torch.allclose(adv0, t([[0.0, 0.0, 0.5]]))  # r_t + V_{t+1} - V_t, V after the end = 0
    # Padding: a 2-token response inside a 3-wide batch ends at token 1.
    adv_p, ret_p = alg.gae(t([[0.0, 1.0, 9.0]]), t([[0.2, 0.4, 9.0]]), t([[1.0, 1.0, 0.0]]), 1.0, 0.5)
    # t=1: delta = 1 - 0.4 = 0.6 ; t=0: delta = 0 + 0.4 - 0.2 = 0.2, A = 0.2 + 0.5 * 0.6 = 0.5
    assert torch.allclose(adv_p, t([[0.5, 0.6, 0.0]]))
    assert torch.allclose(ret_p, t([[0.7, 1.0, 0.0]]))


def test_ppo_clipped_surrogate_by_hand():
    old = t([[0.0, 0.0]])
    logp = t([[math.log(1.5), math.log(0.5)]])
    mask = t([[1.0, 1.0]])
    # A = +1: token 0 min(1.5, 1.2) = 1.2 ; token 1 min(0.5, 0.8) = 0.5 -> loss = -(1.2 + 0.5)/2
    loss, clip = alg.ppo_policy_loss(logp, old, t([[1.0, 1.0]]), mask, clip_range=0.2)
    assert math.isclose(float(loss), -0.85, rel_tol=1e-9)
    assert math.isclose(float(clip), 1.0)
    # A = -1: token 0 min(-1.5, -1.2) = -1.5 ; token 1 min(-0.5, -0.8) = -0.8 -> loss = (1.5 + 0.8)/2
    loss, _ = alg.ppo_policy_loss(logp, old, t([[-1.0, -1.0]]), mask, clip_range=0.2)
    assert math.isclose(float(loss), 1.15, rel_tol=1e-9)


def test_value_loss_with_clipping_by_hand():
    v = t([[1.0, 3.0]])
    old = t([[0.0, 2.5]])
    ret = t([[2.0, 2.0]])
    mask = t([[1.0, 1.0]])
    assert math.isclose(float(alg.value_loss(v, old, ret, mask)), 0.5 * (1.0 + 1.0) / 2)
    # clipped values: 0 + clip(1, ±0.2) = 0.2 ; 2.5 + clip(0.5) = 2.7 -> max((1)², (1.8)²), max(1, 0.7²)
    expected = 0.5 * (1.8**2 + 1.0) / 2
    assert math.isclose(float(alg.value_loss(v, old, ret, mask, clip_range=0.2)), expected)


def test_grpo_loss_on_policy_equals_minus_mean_advantage_plus_beta_k3():
    logp = t([[-1.0, -2.0], [-0.5, -3.0]]).requires_grad_(True)
    ref = t([[-1.5, -2.0], [-0.5, -1.0]])
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    adv = t([1.0, -1.0])
    loss, kl = alg.grpo_loss(logp, logp.detach(), ref, adv, mask, clip_range=0.2, beta=0.1)
    k3 = alg.kl_k3_per_token(logp.detach(), ref, mask)
    kl_seq = t([float(k3[0].sum()) / 2, float(k3[1].sum()) / 1])
    # ratio = 1: per-sequence objective = A_i - beta * mean_t k3
    expected = -((1.0 - 0.1 * kl_seq[0]) + (-1.0 - 0.1 * kl_seq[1])) / 2
    assert math.isclose(float(loss.detach()), float(expected), rel_tol=1e-9)
    assert math.isclose(float(kl), float(kl_seq.mean()), rel_tol=1e-9)


def test_every_algorithm_names_its_kl_estimator():
    from rlaif_trainer.rl.algorithms import ALGORITHMS

    assert {n: a.kl_estimator for n, a in ALGORITHMS.items()} == {
        "reinforce": "k1",
        "rloo": "k1",
        "ppo": "k1",
        "grpo": "k3",
    }


def test_token_means_split_over_processes_average_to_the_whole_batch():
    """Data parallel: two processes' PPO losses with the global token count over the world size as
    normalizer average to the one-process loss, and so do their gradients (what DDP's all-reduce
    mean sees); each process's own token mean does not, when their token counts differ."""
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    whole, _ = alg.ppo_policy_loss(logp, old, adv, mask, 0.2)
    (grad_whole,) = torch.autograd.grad(whole, logp)
    per_process = mask.sum() / 2
    halves = [slice(0, 2), slice(2, 4)]
    losses = [alg.ppo_policy_loss(logp[h], old[h], adv[h], mask[h], 0.2, per_process)[0] for h in halves]
    assert float(sum(losses) / 2) == pytest.approx(float(whole), rel=1e-12)
    (grad_split,) = torch.autograd.grad(sum(losses) / 2, logp)
    assert torch.allclose(grad_split, grad_whole, rtol=1e-12, atol=1e-15)
    own = [alg.ppo_policy_loss(logp[h], old[h], adv[h], mask[h], 0.2)[0] for h in halves]
    assert abs(float(sum(own) / 2) - float(whole)) > 1e-3  # the 7 and 4 tokens weigh differently
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    ret = torch.randn(4, 5, generator=g, dtype=torch.float64)
    whole_v = alg.value_loss(v, v, ret, mask, 0.2)
    split_v = [alg.value_loss(v[h], v[h], ret[h], mask[h], 0.2, per_process) for h in halves]
    assert float(sum(split_v) / 2) == pytest.approx(float(whole_v), rel=1e-12)
