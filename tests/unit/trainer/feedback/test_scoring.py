"""The d-RLAIF scorer: Σ i·P(i) over 1..10 normalised to [-1, 1], with "10" scored as a full sequence."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.scoring import DirectScorer, expected_score, normalize_score

PROMPTS = ["What is the capital of France?", "Give me a recipe for pancakes.", "Explain why the sky is blue."]
RESPONSES = ["Paris.", "Mix flour, eggs and milk, then fry.", "I like turtles and long walks."]


def _seq_logprob(model, prompt_ids: list[int], cont: list[int]) -> float:
    x = torch.tensor([prompt_ids + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
    n = len(prompt_ids)
    return float(sum(lp[n - 1 + j, t] for j, t in enumerate(cont)))


def test_normalisation():
    assert normalize_score(1, 10) == -1 and normalize_score(10, 10) == 1 and normalize_score(5.5, 10) == 0
    assert expected_score([0, 0, 1]) == 3
    assert expected_score([1, 1]) == 1.5


def test_ten_is_two_tokens_and_is_scored_as_a_full_sequence(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    ds = DirectScorer(model, tok, batch_size=2)
    assert len(tok.encode("10", add_special_tokens=False)) == 2 and ds.ext == tok.encode(
        "1", add_special_tokens=False
    )
    probs = ds.candidate_probs(PROMPTS, RESPONSES)
    fmt = P.ChatFormatter(tok)
    one = tok.encode("1", add_special_tokens=False)[0]
    for p, r, got in zip(PROMPTS, RESPONSES, probs, strict=True):
        assert sum(got) == pytest.approx(1.0, abs=1e-9) and len(got) == 10
        text = fmt.parts(P.score_head(None), P.score_body(p, r), P.score_ending(10)).text
        ids = tok.encode(text, add_special_tokens=False)
        # reference: independent forward passes per candidate sequence
        raw = []
        for i in range(1, 11):
            cand = tok.encode(str(i), add_special_tokens=False)
            raw.append(math.exp(_seq_logprob(model, ids, cand)))
        # "1" alone = "1" followed by no further digit ("10" is ten, "15" is off the scale)
        digits = [tok.encode(d, add_special_tokens=False)[0] for d in "0123456789"]
        raw[0] = math.exp(_seq_logprob(model, ids, [one])) - sum(
            math.exp(_seq_logprob(model, ids, [one, d])) for d in digits
        )
        want = [x / sum(raw) for x in raw]
        assert got == pytest.approx(want, abs=1e-5)
    scores = ds.score(PROMPTS, RESPONSES)
    for s, pr in zip(scores, probs, strict=True):
        assert -1.0 <= s <= 1.0
        assert s == pytest.approx(normalize_score(sum((i + 1) * q for i, q in enumerate(pr)), 10), abs=1e-9)


def test_nine_point_scale_and_prefix_cache_equivalence(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    a = DirectScorer(model, tok, scale=9)
    b = DirectScorer(model, tok, scale=9, use_prefix_cache=False)
    assert a.ext == []
    assert a.score(PROMPTS, RESPONSES) == pytest.approx(b.score(PROMPTS, RESPONSES), abs=1e-4)
    c = DirectScorer(model, tok, use_prefix_cache=False)
    d = DirectScorer(model, tok)
    assert c.score(PROMPTS, RESPONSES) == pytest.approx(d.score(PROMPTS, RESPONSES), abs=1e-4)


def test_hf_pairwise_labeler_score_is_the_direct_score(tiny_model_and_tokenizer):
    from rlaif_trainer.feedback.hf import HFPairwiseLabeler

    model, tok = tiny_model_and_tokenizer
    lab = HFPairwiseLabeler(model, tok)
    assert lab.score(PROMPTS, RESPONSES) == pytest.approx(
        DirectScorer(model, tok).score(PROMPTS, RESPONSES), abs=1e-6
    )
