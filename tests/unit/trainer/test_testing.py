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


def test_synthetic_pairs_are_seeded_in_range_and_prefer_the_shorter() -> None:
    from rlaif_trainer.testing import SYNTHETIC_WORDS, synthetic_pairs

    pairs = synthetic_pairs(40, prompt_words=(2, 5), response_words=(3, 9), seed=4)
    assert pairs == synthetic_pairs(40, prompt_words=(2, 5), response_words=(3, 9), seed=4)
    assert pairs != synthetic_pairs(40, prompt_words=(2, 5), response_words=(3, 9), seed=5)
    for i, p in enumerate(pairs):
        words = p["prompt"].split()
        assert words[:2] == ["Question", f"{i}:"] and 2 <= len(words) - 2 <= 5
        la, lb = len(p["response_a"].split()), len(p["response_b"].split())
        assert 3 <= la <= 9 and 3 <= lb <= 9
        assert set(p["response_a"].split()) <= set(SYNTHETIC_WORDS)
        assert p["p_a"] == (1.0 if la < lb else 0.0)
