"""The RL loop on a tiny config-built model: reference policy, KL at step 0, resume, learning, d-RLAIF."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlaif_api import RLAIFJob, StageConfig, resolve_stage_configs  # noqa: E402

PROMPTS = [
    "Summarize: The city council approved a new park near the river on Monday.",
    "Explain why the sky is blue.",
    "Give me a recipe for pancakes.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Is the response helpful, honest and harmless?",
    "Rate the response on a scale from 1 to 10.",
    "A good summary captures the most important points of the original text.",
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France?",
]
SHORTER = "rlaif_trainer.feedback.rules:prefer_shorter"


def make_config(
    tmp_path: Path,
    model_dir: Path,
    *,
    rl: dict | None = None,
    labeler: dict | None = None,
    lora: dict | None = None,
    stages: list[str] | None = None,
    seed: int = 0,
) -> StageConfig:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    rl_spec = {
        "algorithm": "reinforce",
        "reward": "direct",
        "steps": 2,
        "batchSize": 2,
        "samplesPerPrompt": 2,
        "maxNewTokens": 8,
        "learningRate": 1e-2,
        "checkpointEvery": 1,
        **(rl or {}),
    }
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": "rltest"},
            "spec": {
                "policy": {"model": str(model_dir), "lora": lora or {"r": 4, "alpha": 8, "dropout": 0.0}},
                "dataset": {"prompts": str(prompts)},
                "labeler": labeler or {"provider": "python", "callable": SHORTER},
                "rl": rl_spec,
                "stages": stages or ["rl"],
                "seed": seed,
            },
        }
    )
    return resolve_stage_configs(job, tmp_path / "ws")["rl"]


def make_trainer(config: StageConfig, model_dir: Path, **kwargs):
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import build_reward_fn, loop_config

    model, tok = load_causal_lm(str(model_dir), device="cpu")
    if "reward_fn" not in kwargs:
        kwargs["reward_factory"] = functools.partial(build_reward_fn, config)
    # The loop takes its own settings, built from the stage config as the rl stage builds them.
    return RLTrainer(loop_config(config), model=model, tokenizer=tok, progress=False, device="cpu", **kwargs)


def _randomize_lora(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_reference_logits_equal_base_logits_with_adapters_disabled(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = make_config(tmp_path, tiny_model_dir)
    trainer = make_trainer(cfg, tiny_model_dir)
    _randomize_lora(trainer.model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = trainer.tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = base(**ids).logits
        with trainer.model.disable_adapter():
            ref = trainer.model(**ids).logits
        adapted = trainer.model(**ids).logits
    assert torch.allclose(ref, want, atol=1e-6), float((ref - want).abs().max())
    # ...and the adapters do change the policy, so the comparison above is not vacuous.
    assert float((adapted - want).abs().max()) > 1e-3
    # One copy of the weights: the base model's parameters are the peft model's frozen ones.
    n_frozen = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
    assert n_frozen == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("algorithm", ["reinforce", "rloo", "grpo", "ppo"])
def test_kl_is_zero_at_step_zero_and_metrics_are_complete(tmp_path, tiny_model_dir, algorithm):
    cfg = make_config(tmp_path, tiny_model_dir, rl={"algorithm": algorithm, "learningRate": 5e-2})
    trainer = make_trainer(cfg, tiny_model_dir)
    m0 = trainer.train_step(0)
    assert m0["kl"] == pytest.approx(0.0, abs=1e-6)
    for key in (
        "reward",
        "entropy",
        "response_length",
        "gen_time_s",
        "train_time_s",
        "reward_time_s",
        "tokens",
    ):
        assert key in m0 and math.isfinite(m0[key])
    assert m0["kl_estimator"] == ("k3" if algorithm == "grpo" else "k1")
    assert m0["samples"] == 4
    # After an update the policy has moved away from the reference.
    m1 = trainer.train_step(1)
    assert abs(m1["kl"]) > 1e-6


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_resume_reproduces_the_uninterrupted_next_step(tmp_path, tiny_model_dir, algorithm):
    rl = {"algorithm": algorithm, "steps": 3, "checkpointEvery": 1, "learningRate": 5e-2}
    cfg = make_config(tmp_path, tiny_model_dir, rl=rl, seed=7)

    straight = make_trainer(cfg, tiny_model_dir, work_dir=tmp_path / "straight")
    full = straight.train()
    assert [m["step"] for m in full] == [1, 2, 3]

    first = make_trainer(cfg, tiny_model_dir, work_dir=tmp_path / "interrupted")
    first.train(until=2)  # "killed" after step 2's checkpoint
    resumed = make_trainer(cfg, tiny_model_dir, work_dir=tmp_path / "interrupted")
    rest = resumed.train()
    assert resumed.resumed_from == 2
    assert [m["step"] for m in rest] == [3]
    for key in ("reward", "kl", "loss", "entropy", "response_length"):
        assert rest[0][key] == pytest.approx(full[2][key], rel=1e-5, abs=1e-6), key
    assert rest[0]["example"] == full[2]["example"]
    a, b = straight._adapter_state(), resumed._adapter_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # The metrics file holds each step exactly once.
    assert [m["step"] for m in resumed.all_metrics()] == [1, 2, 3]


def _mean_words(trainer, n_rounds: int = 6) -> float:
    from rlaif_trainer.modeling.chat import format_prompts
    from rlaif_trainer.modeling.generation import generate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        g = generate(
            trainer.model,
            trainer.tokenizer,
            format_prompts(trainer.tokenizer, trainer.train_prompts * n_rounds),
            max_new_tokens=trainer.config.max_new_tokens,
            temperature=trainer.config.temperature,
        )
    return sum(len(t.split()) for t in g.texts) / len(g.texts)


@pytest.mark.parametrize(
    ("rule", "direction"),
    [("prefer_shorter", "shorter"), ("prefer_longer", "longer")],
)
def test_learning_rl_moves_the_policy_towards_a_rule_based_preference(
    tmp_path, tiny_model_dir, rule, direction
):
    """A python-callable labeler prefers shorter (or longer) responses; RL must move the policy that way.

    Both directions are tested, so a policy that merely collapses (e.g. onto short outputs) fails one.
    30 steps: with per-sample sampling seeds, "shorter" missed the 0.8 ratio at 20 steps for 2 of 4
    job seeds (ratios 0.41-0.88) and reached 0.01-0.5 at 30 for the 3 seeds tried; "longer" is far
    above its 1.25 already at 20 (2.2-3.4).
    """
    rl = {
        "algorithm": "rloo",
        "steps": 30,
        "batchSize": 4,
        "samplesPerPrompt": 4,
        "maxNewTokens": 16,
        "learningRate": 2e-2,
        "klCoef": 0.01,
        "checkpointEvery": 100,
    }
    # LoRA on the output layer too: the tiny random model's logits are near-uniform, and
    # attention-only adapters would need many more steps to move them.
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj", "lm_head"]}
    labeler = {"provider": "python", "callable": f"rlaif_trainer.feedback.rules:{rule}"}
    cfg = make_config(tmp_path, tiny_model_dir, rl=rl, lora=lora, labeler=labeler, seed=3)
    trainer = make_trainer(cfg, tiny_model_dir)
    before = _mean_words(trainer)
    history = trainer.train()
    after = _mean_words(trainer)
    assert before > 3.0  # the untrained tiny model babbles several words in 16 tokens
    if direction == "shorter":
        assert after < 0.8 * before, (before, after)
    else:
        assert after > 1.25 * before, (before, after)
    first = sum(m["reward"] for m in history[:4]) / 4
    last = sum(m["reward"] for m in history[-4:]) / 4
    assert last > first + 0.02, (first, last)


def test_direct_reward_comes_from_the_frozen_labeler_and_is_in_range(tmp_path, tiny_model_dir):
    """d-RLAIF with an hf labeler on the policy's own model: scores in [-1, 1], from the initial weights."""
    from rlaif_trainer.stages.rl import build_reward_fn

    labeler = {"provider": "hf", "mode": "pairwise"}
    cfg = make_config(tmp_path, tiny_model_dir, labeler=labeler)
    trainer = make_trainer(cfg, tiny_model_dir)
    responses = ["Paris is the capital of France.", "The waves roll in and out again.", "", "Yes"]
    prompts = PROMPTS[:4]
    before = trainer.reward_fn(prompts, responses)
    assert all(-1.0 <= s <= 1.0 for s in before)
    _randomize_lora(trainer.model)
    after = trainer.reward_fn(prompts, responses)
    assert after == pytest.approx(before, abs=1e-6)  # the trained adapters do not grade themselves
    # A separately built reward function (its own labeler model) agrees.
    fresh = build_reward_fn(cfg)(prompts, responses)
    assert fresh == pytest.approx(before, abs=1e-4)


def test_d_rlaif_reward_is_in_range_and_monotone_in_the_score_probabilities():
    from rlaif_trainer.feedback.scoring import expected_score, normalize_score

    def reward(probs):
        return normalize_score(expected_score(probs), 10)

    assert reward([1.0] + [0.0] * 9) == pytest.approx(-1.0)
    assert reward([0.0] * 9 + [1.0]) == pytest.approx(1.0)
    assert reward([0.1] * 10) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        p = torch.rand(10, generator=g).tolist()
        r = reward(p)
        assert -1.0 <= r <= 1.0
        i, j = sorted(torch.randint(0, 10, (2,), generator=g).tolist())
        if i == j or p[i] == 0:
            continue
        moved = list(p)
        delta = moved[i] * 0.5
        moved[i] -= delta
        moved[j] += delta  # mass moves to a higher score
        assert reward(moved) > r


def test_run_writes_the_artifact_atomically_and_skips_when_done(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif_trainer.stages.rl import run

    monkeypatch.setenv("RLAIF_DEVICE", "cpu")
    cfg = make_config(tmp_path, tiny_model_dir, rl={"steps": 3, "checkpointEvery": 2})
    summary = run(cfg, progress=False)
    out = Path(cfg.artifacts.policy)
    assert (out / "DONE").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert not Path(str(out) + ".partial").exists()  # checkpoints are cleaned up
    assert summary.steps == 3 and summary.replicas_in_sync is True
    assert summary.kl_estimator == "k1" and summary.reward_source == "direct"
    assert len(json.dumps(summary.to_message())) < 4096
    assert json.loads((out / "DONE").read_text()) == summary.to_message()
    again = run(cfg, progress=False)
    assert again.resumed is True and again.final_reward == summary.final_reward


def test_prompt_longer_than_the_limit_is_bad_input(tmp_path, tiny_model_dir):
    from rlaif_trainer.errors import BadInputError

    cfg = make_config(tmp_path, tiny_model_dir)
    cfg.spec.policy.max_prompt_length = 8
    trainer = make_trainer(cfg, tiny_model_dir)
    with pytest.raises(BadInputError, match="maxPromptLength"):
        trainer.train_step(0)
