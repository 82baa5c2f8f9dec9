"""The pointwise labeler's information term (labeler.informationWeight): the arithmetic against an
unbatched forward pass of the tiny model, and how it joins the principles."""

from __future__ import annotations

import pytest
import torch

from rlaif_trainer.feedback.base import InputTooLongError
from rlaif_trainer.feedback.hf import HFPointwiseLabeler
from rlaif_trainer.feedback.information import CONTEXT, INFORMATION_TERM, PromptInformation

PROMPTS = [
    "Summarize: The city council approved a new park near the river on Monday.",
    "Summarize: The city council approved a new park near the river on Monday.",
    "Summarize: My cat sleeps on the keyboard every morning.",
]
RESPONSES = ["The council approved a riverside park.", "Bananas are yellow.", ""]


def _prompt_logprob(model, tok, context: str, prompt: str) -> float:
    """log P(prompt | context), one sequence, no padding: the reference for the batched code."""
    c = tok.encode(context, add_special_tokens=False)
    p = tok.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([c + p])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return float(sum(lp[len(c) + i - 1, t] for i, t in enumerate(p)))


def test_information_is_the_per_token_pmi_of_unpadded_passes(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    # batch_size 2 puts items of different lengths in one padded batch.
    got = PromptInformation(model, tok, batch_size=2)(PROMPTS, RESPONSES)
    for p, r, g in zip(PROMPTS, RESPONSES, got, strict=True):
        given = _prompt_logprob(model, tok, CONTEXT.format(response=r), p)
        alone = _prompt_logprob(model, tok, CONTEXT.format(response=""), p)
        assert g == pytest.approx((given - alone) / len(tok.encode(p, add_special_tokens=False)), abs=1e-4)
    # The empty response is the baseline itself: it tells nothing about its prompt.
    assert got[2] == pytest.approx(0.0, abs=1e-5)


def test_the_baseline_is_computed_once_per_prompt(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    info = PromptInformation(model, tok, batch_size=4)
    calls: list[int] = []
    real = info.prompt_logprob
    info.prompt_logprob = lambda ctx, prompts: calls.append(len(prompts)) or real(ctx, prompts)  # type: ignore[method-assign]
    first = info(PROMPTS, RESPONSES)
    assert calls == [2, 3]  # two distinct prompts' baselines, then the three responses
    assert info(PROMPTS, RESPONSES) == pytest.approx(first) and calls[2:] == [3]
    info.clear_cache()
    info(PROMPTS[:1], RESPONSES[:1])
    assert calls[3:] == [1, 1]
    with pytest.raises(ValueError, match="differ in length"):
        info(PROMPTS, RESPONSES[:1])


def test_the_weighted_term_is_one_more_log_odds_column(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    principles = ["Is the response a summary?"]
    plain = HFPointwiseLabeler(model, tok, principles=principles, batch_size=2)
    assert plain.information is None and plain.term_names == principles
    lab = HFPointwiseLabeler(model, tok, principles=principles, batch_size=2, information_weight=3.0)
    assert lab.term_names == [*principles, INFORMATION_TERM]
    info = PromptInformation(model, tok)(PROMPTS, RESPONSES)
    rows = lab.logodds(PROMPTS, RESPONSES)
    for row, base, x in zip(rows, plain.logodds(PROMPTS, RESPONSES), info, strict=True):
        assert row[0] == pytest.approx(base[0], abs=1e-5) and row[1] == pytest.approx(3.0 * x, abs=1e-4)
    # Scores and preferences average it with the principles, like any principle.
    scores = lab.score(PROMPTS, RESPONSES)
    for s, row in zip(scores, rows, strict=True):
        assert s == pytest.approx(
            sum(2 * torch.sigmoid(torch.tensor(v)).item() - 1 for v in row) / 2, abs=1e-5
        )
    pref = lab.preference(PROMPTS[:1], RESPONSES[:1], RESPONSES[1:2])[0]
    want = sum(torch.sigmoid(torch.tensor(a - b)).item() for a, b in zip(rows[0], rows[1], strict=True)) / 2
    assert pref.p_a == pytest.approx(want, abs=1e-5)
    # The labeler's clear_cache forgets the term's baselines too (weights it reads have changed).
    assert lab.information is not None and lab.information._baseline
    lab.clear_cache()
    assert not lab.information._baseline


def test_a_response_too_long_for_the_labeler_is_named_before_the_term_runs(tiny_model_and_tokenizer):
    # The term reads the prompt and the response in a shorter text than any principle's, so the
    # principles' context check, which runs first, is the one that must catch an oversized item.
    model, tok = tiny_model_and_tokenizer
    lab = HFPointwiseLabeler(model, tok, principles=["Is the response a summary?"], information_weight=1.0)
    too_long = "word " * lab.scorer.max_length
    with pytest.raises(InputTooLongError) as err:
        lab.logodds(PROMPTS[:2], ["A park.", too_long])
    assert err.value.index == 1 and err.value.limit == lab.scorer.max_length
    assert lab.information is not None and not lab.information._baseline


def test_calibration_reports_the_term_alone_beside_each_principle(tiny_model_and_tokenizer):
    from rlaif_trainer.feedback.calibration import calibrate

    model, tok = tiny_model_and_tokenizer
    lab = HFPointwiseLabeler(model, tok, principles=["Is the response a summary?"], information_weight=2.0)
    pairs = [
        {"id": f"c{i}", "prompt": p, "response_a": a, "response_b": b, "p_a": 1.0}
        for i, (p, a, b) in enumerate(zip(PROMPTS[:2], RESPONSES[:2], RESPONSES[1::-1], strict=True))
    ]
    report, records = calibrate(lab, pairs)
    assert set(report["alignment_by_principle"]) == {"Is the response a summary?", INFORMATION_TERM}
    assert all(len(r["details"]["logodds_a"]) == 2 for r in records)
