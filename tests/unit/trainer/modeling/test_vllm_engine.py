"""rl.generation: vllm on the CPU: the weight sync to a colocated engine, checked with a fake engine
(vLLM itself is on no machine this project has: the fake stands in for it and records what it is
sent). What it receives must equal an independent merge of the policy (peft's merge_and_unload on
a copy), once per optimizer step, while the policy's own weights stay untouched."""

from __future__ import annotations

import copy
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlaif_trainer.errors import BadInputError  # noqa: E402
from rlaif_trainer.modeling.vllm_engine import EngineRollout, VLLMEngine, merged_weights  # noqa: E402
from tests.unit.trainer.rl.test_loop import _randomize_lora, make_config, make_trainer  # noqa: E402


class FakeEngine:
    """Records the weights it is sent; answers the i-th prompt with ``1 + i % 3`` copies of one
    word (lengths that differ within each group, so the brevity reward moves the policy)."""

    def __init__(self, word: list[int]) -> None:
        self.loads: list[dict[str, torch.Tensor]] = []
        self.calls: list[list[list[int]]] = []
        self.word = word

    def load_weights(self, weights):
        self.loads.append({name: t.detach().clone() for name, t in weights})

    def generate(self, prompt_ids, *, max_new_tokens, temperature, top_p, stop_ids):
        self.calls.append(prompt_ids)
        return [(self.word * (1 + i % 3))[:max_new_tokens] for i in range(len(prompt_ids))]


def _reference_merge(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_weights_equal_an_independent_merge_and_leave_the_policy_untouched(tiny_model_dir, dtype):
    from peft import LoraConfig, get_peft_model

    from rlaif_trainer.modeling.loading import load_causal_lm

    model, _ = load_causal_lm(str(tiny_model_dir), device="cpu", dtype=getattr(torch, dtype))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    _randomize_lora(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = dict(merged_weights(model))
    ref = _reference_merge(model)
    assert set(got) == set(ref) - {"lm_head.weight"}  # tied to the embeddings: not a parameter of its own
    for name, tensor in got.items():
        assert tensor.dtype == ref[name].dtype
        assert torch.equal(tensor, ref[name]), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with model.disable_adapter():  # adapters off: the base weights, as the forward pass sees them
        off = dict(merged_weights(model))
    assert torch.equal(off[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"])


def test_rl_with_an_engine_syncs_the_updated_policy_before_each_rollout(tmp_path, tiny_model_dir):
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        rl={"algorithm": "grpo", "steps": 3, "generation": "vllm", "learningRate": 0.05},
    )
    from rlaif_trainer.modeling.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fake = FakeEngine(word=tok.encode(" the", add_special_tokens=False))
    trainer = make_trainer(cfg, tiny_model_dir, generation_engine=fake)
    merges: list[dict[str, torch.Tensor]] = []
    original_rollout = trainer.rollout

    def rollout(step):  # what the engine must hold when this step samples: the policy right now
        merges.append(_reference_merge(trainer.model))
        return original_rollout(step)

    trainer.rollout = rollout
    rows = trainer.train()
    assert len(rows) == 3 and len(fake.loads) == 3 and len(fake.calls) == 3
    for sent, ref in zip(fake.loads, merges, strict=True):
        assert set(sent) == set(ref) - {"lm_head.weight"}
        for name, tensor in sent.items():
            assert torch.allclose(tensor, ref[name], atol=1e-6, rtol=0), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(fake.loads[0][q], fake.loads[2][q])  # the updates reached the engine
    # the prompts were sent unpadded, and the responses are the engine's
    assert all(tok.pad_token_id not in ids for ids in fake.calls[0])
    n = len(fake.word)
    assert all(r["response_length"] == pytest.approx(n * sum(1 + i % 3 for i in range(4)) / 4) for r in rows)


def test_engine_rollout_sends_weights_only_when_the_version_moves(tiny_model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_model_and_tokenizer
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    fake = FakeEngine(word=[5])
    roll = EngineRollout(fake)
    assert roll.sync(policy, 0) and not roll.sync(policy, 0) and roll.sync(policy, 1)
    assert len(fake.loads) == 2


def test_vllm_engine_without_vllm_is_bad_input_naming_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(BadInputError, match=r"rl\.generation.*vllm"):
        VLLMEngine("some/model", seed=0)
