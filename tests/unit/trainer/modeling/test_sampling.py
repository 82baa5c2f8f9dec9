"""modeling.generation.sample_tokens: the decode loop that replaced ``model.generate`` draws the very
tokens HF's sampling draws for the same RNG state, on the real tiny model (with LoRA), and hands
back ordinary tensors that a gradient-recording forward can take."""

from __future__ import annotations

import pytest
import torch

from rlaif_trainer.modeling.chat import format_prompts
from rlaif_trainer.modeling.generation import eos_ids, generate, sample_tokens, tokenize_prompts

PROMPTS = [
    "Explain why the sky is blue.",
    "Give me a recipe for pancakes.",
    "What is the capital of France?",
    "Write a short poem about the sea. The waves roll in.",
    "Summarize: The city council approved a new park near the river on Monday.",
]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from rlaif_trainer.modeling.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is part of what is compared
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    model.eval()
    return model, tok


def _inputs(tok):
    return tokenize_prompts(tok, format_prompts(tok, PROMPTS), "cpu")


@pytest.mark.parametrize(
    ("do_sample", "temperature", "top_p", "top_k"),
    [(True, 0.9, 1.0, 0), (True, 1.3, 0.7, 0), (True, 1.0, 0.9, 40), (False, 1.0, 1.0, 0)],
)
def test_draws_the_same_tokens_as_hf_generate(policy, do_sample, temperature, top_p, top_k):
    model, tok = policy
    ids, mask = _inputs(tok)
    stop = eos_ids(tok, model)
    kwargs = {
        "max_new_tokens": 24,
        "do_sample": do_sample,
        "eos_token_id": stop,
        "pad_token_id": tok.pad_token_id,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    torch.manual_seed(11)
    expected = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
    torch.manual_seed(11)
    got = sample_tokens(
        model,
        ids,
        mask,
        max_new_tokens=24,
        temperature=temperature,
        top_p=top_p,
        do_sample=do_sample,
        stop_ids=stop,
        pad_id=tok.pad_token_id,
        top_k=top_k,
    )
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_stops_when_every_row_has_stopped_and_pads_finished_rows(policy):
    model, tok = policy
    ids, mask = _inputs(tok)
    # Stop tokens: each row's greedy first token, so every row stops at step 1 or continues once.
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1).tolist()
    stop = sorted(set(first))
    torch.manual_seed(0)
    expected = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=tok.pad_token_id,
    )[:, ids.shape[1] :]
    got = sample_tokens(
        model,
        ids,
        mask,
        max_new_tokens=20,
        temperature=1.0,
        top_p=1.0,
        do_sample=False,
        stop_ids=stop,
        pad_id=tok.pad_token_id,
    )
    assert got.shape == expected.shape == (len(PROMPTS), 1)
    assert torch.equal(got, expected)


def test_generate_returns_tensors_a_training_forward_can_use(policy):
    model, tok = policy
    g = generate(model, tok, format_prompts(tok, PROMPTS), max_new_tokens=8, temperature=0.9)
    assert not g.response_ids.is_inference() and not g.query_ids.is_inference()
    assert g.response_ids.shape[0] == len(PROMPTS) and g.response_mask.shape == g.response_ids.shape
    # an embedding lookup that records gradients takes them (inference tensors would be refused)
    model.get_input_embeddings().weight.requires_grad_(True)
    try:
        model(input_ids=torch.cat([g.query_ids, g.response_ids], 1)).logits.sum().backward()
    finally:
        model.get_input_embeddings().weight.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def test_max_new_tokens_below_one_is_refused(policy):
    model, tok = policy
    ids, mask = _inputs(tok)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample_tokens(
            model,
            ids,
            mask,
            max_new_tokens=0,
            temperature=1.0,
            top_p=1.0,
            do_sample=True,
            stop_ids=[0],
            pad_id=0,
        )
