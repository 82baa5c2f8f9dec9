"""Candidate sampling goes through the generation RL and evaluation use: the same chat template, the
same stop rule and the same sampler, so the labelled pairs come from the policy RL starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.candidates import batch_seed, generate_candidates
from rlaif_trainer.modeling.chat import format_prompts
from rlaif_trainer.modeling.generation import generate, prompt_lengths

PROMPTS = [{"id": f"q{i}", "prompt": f"Tell me about river {i}.", "source": f"p:{i}"} for i in range(5)]


def test_each_pair_is_two_samples_of_the_rl_sampler_with_the_batch_seed(
    tmp_path: Path, tiny_model_and_tokenizer
):
    model, tok = tiny_model_and_tokenizer
    recs = generate_candidates(
        model, tok, PROMPTS, tmp_path / "c.jsonl", max_new_tokens=6, batch_size=2, seed=7, progress=False
    )
    # What the RL rollout draws for the same formatted prompts, each twice in a row, seeded per batch.
    expected: list[str] = []
    for b, start in enumerate(range(0, len(PROMPTS), 2)):
        torch.manual_seed(batch_seed(7, b))
        batch = format_prompts(tok, [r["prompt"] for r in PROMPTS[start : start + 2]])
        g = generate(model, tok, [t for t in batch for _ in range(2)], max_new_tokens=6, temperature=0.9)
        expected.extend(g.texts)
    assert [t for r in recs for t in (r["response_a"], r["response_b"])] == expected
    assert [r["seed"] for r in recs] == [batch_seed(7, b // 2) for b in range(5)]
    on_disk = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert on_disk == recs


def test_a_prompt_longer_than_max_prompt_length_is_refused_by_name(tmp_path: Path, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    limit = max(prompt_lengths(tok, format_prompts(tok, [r["prompt"] for r in PROMPTS])))
    long = {"id": "long", "prompt": "Tell me about every river there is, one by one.", "source": "p:9"}
    n = prompt_lengths(tok, format_prompts(tok, [long["prompt"]]))[0]
    assert n > limit
    with pytest.raises(BadInputError, match=rf"^p:9: the prompt is {n} tokens, .*maxPromptLength={limit}$"):
        generate_candidates(
            model, tok, [*PROMPTS, long], tmp_path / "c.jsonl", max_prompt_length=limit, progress=False
        )
    assert not (tmp_path / "c.jsonl").exists()  # refused before sampling anything
