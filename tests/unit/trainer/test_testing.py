"""The tiny test model really has the properties the other tests rely on."""

from __future__ import annotations

from pathlib import Path


def test_tiny_tokenizer_single_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for word in [*(str(i) for i in range(1, 10)), "Yes", "No"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    assert len(tok.encode("10", add_special_tokens=False)) == 2  # like SmolLM2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_tiny_model_loads_and_runs(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[-1] == model.config.vocab_size
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
