"""The GPU performance options' device and dtype logic, on the CPU (so that the GPU code paths
cannot rot unseen): fused AdamW only on CUDA, gradient checkpointing that really recomputes and
gives the same gradients (in the RL policy's eval mode too), fp32 adapters on a bf16 base, SDPA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlaif_trainer.modeling.performance import (  # noqa: E402
    adamw_kwargs,
    checkpointing,
    enable_gradient_checkpointing,
)
from tests.unit.trainer.rl.test_loop import _randomize_lora, make_config, make_trainer  # noqa: E402


def test_fused_adamw_on_cuda_only():
    assert adamw_kwargs("cuda") == {"fused": True}
    assert adamw_kwargs(torch.device("cuda", 1)) == {"fused": True}
    assert adamw_kwargs("cpu") == {}


def test_rl_optimizer_takes_the_device_options(tmp_path, tiny_model_dir):
    trainer = make_trainer(make_config(tmp_path, tiny_model_dir), tiny_model_dir)
    assert not trainer.optimizer.defaults.get("fused")  # CPU: the default implementation


def _layer_calls(model) -> list[int]:
    """Counts the decoder layers' MLP calls: a checkpointed layer's backward runs its forward again,
    and with it the MLP (the layer's own hooks stay outside the checkpoint, so the MLP is counted)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls = [0]
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _grads(tiny_model_dir, *, ckpt: bool):
    from peft import LoraConfig, get_peft_model

    from rlaif_trainer.modeling.loading import load_causal_lm

    model, _ = load_causal_lm(str(tiny_model_dir), device="cpu")
    torch.manual_seed(0)  # the same LoRA A matrices in both models
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    _randomize_lora(model)
    if ckpt:
        enable_gradient_checkpointing(model)
    model.eval()  # as the RL policy runs
    calls = _layer_calls(model)
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with checkpointing(model):
        model(input_ids=ids, use_cache=False).logits.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, calls[0], model


def test_gradient_checkpointing_recomputes_in_eval_mode_with_the_same_gradients(tiny_model_dir):
    plain, plain_calls, _ = _grads(tiny_model_dir, ckpt=False)
    ckpt, ckpt_calls, model = _grads(tiny_model_dir, ckpt=True)
    assert plain_calls == 2  # two decoder layers, one forward each
    assert ckpt_calls == 4  # and once more each in the backward: checkpointing ran
    assert set(plain) == set(ckpt) and plain
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name
    assert not any(m.training for m in model.modules())  # the context left every module in eval


def test_rl_gradient_checkpointing_option_turns_it_on(tmp_path, tiny_model_dir):
    cfg = make_config(
        tmp_path, tiny_model_dir, rl={"algorithm": "grpo", "ppoEpochs": 1, "gradientCheckpointing": True}
    )
    trainer = make_trainer(cfg, tiny_model_dir)
    assert (
        getattr(trainer.model, "is_activation_checkpointing", None) or trainer.model.is_gradient_checkpointing
    )
    calls = _layer_calls(trainer.model)
    trainer.train_step(0)
    # generation (no grad: plain forwards), the reference forward, the policy forward, and the
    # recomputation in the backward: more layer calls than without checkpointing by one per layer
    (tmp_path / "off").mkdir()
    off = make_trainer(
        make_config(tmp_path / "off", tiny_model_dir, rl={"algorithm": "grpo", "ppoEpochs": 1}),
        tiny_model_dir,
    )
    calls_off = _layer_calls(off.model)
    off.train_step(0)
    assert calls[0] == calls_off[0] + 2


def test_bf16_base_keeps_fp32_adapters_and_the_update_runs(tmp_path, tiny_model_dir):
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16)
    cfg = make_config(tmp_path, tiny_model_dir, rl={"algorithm": "rloo"})
    trainer = RLTrainer(
        loop_config(cfg),
        model=model,
        tokenizer=tok,
        progress=False,
        device="cpu",
        reward_fn=lambda p, r: [0.0] * len(r),
    )
    frozen = {p.dtype for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trained = {p.dtype for p in trainer.lora_params}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    metrics = trainer.train_step(0)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss", "kl", "reward"))


def test_default_dtype_is_bf16_on_a_bf16_gpu_and_fp32_elsewhere(monkeypatch):
    from rlaif_trainer.modeling.loading import default_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert default_dtype(torch.device("cuda")) is torch.float32
    assert default_dtype(torch.device("cpu")) is torch.float32


def test_models_load_with_sdpa_attention(tiny_model_dir):
    from rlaif_trainer.modeling.loading import load_causal_lm, load_reward_model

    lm, _ = load_causal_lm(str(tiny_model_dir), device="cpu")
    rm, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    assert lm.config._attn_implementation == "sdpa" and rm.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the device run)")
def test_cuda_rl_step_bf16_fused(tmp_path, tiny_model_dir):
    """Runs where a GPU is (benchmarks/device_run.sh runs the -k cuda cases): one RL step on CUDA
    with the bf16 base, fp32 adapters and fused AdamW."""
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.rl.loop import RLTrainer
    from rlaif_trainer.stages.rl import loop_config

    model, tok = load_causal_lm(str(tiny_model_dir), device="cuda")
    cfg = make_config(tmp_path, tiny_model_dir, rl={"algorithm": "grpo"})
    trainer = RLTrainer(
        loop_config(cfg),
        model=model,
        tokenizer=tok,
        progress=False,
        device="cuda",
        reward_fn=lambda p, r: [0.0] * len(r),
    )
    assert trainer.optimizer.defaults.get("fused") is True
    assert next(p for n, p in trainer.model.named_parameters() if "base_layer" in n).dtype == torch.bfloat16
    metrics = trainer.train_step(0)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
