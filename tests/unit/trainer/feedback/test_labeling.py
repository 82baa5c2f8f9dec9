"""The labeler (hf provider on the tiny local model): soft labels, debiasing, pointwise, prefix caching."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.base import PairwiseLabelerBase, PreferenceResult, combine_orders
from rlaif_trainer.feedback.hf import HFPairwiseLabeler, HFPointwiseLabeler
from rlaif_trainer.feedback.prefix import PrefixScorer, single_token_id

PROMPTS = [
    "Summarize: The city council approved a new park near the river on Monday.",
    "What is the capital of France?",
    "Give me a recipe for pancakes.",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
]
A = [
    "The council approved a riverside park.",
    "Paris.",
    "Mix flour, eggs and milk, then fry spoonfuls in a hot pan until golden on both sides.",
    "Sunlight scatters off molecules in the air, and blue light scatters the most.",
    "The waves roll in and out again.",
]
B = [
    "Bananas are yellow.",
    "Paris is the capital of France, a country in Western Europe known for its food.",
    "I like turtles.",
    "Because.",
    "The stock market closed higher on Tuesday after a quiet session.",
]


def _full_next_token_logprobs(model, tok, text: str, ids: list[int]) -> list[float]:
    """Independent reference: one unpadded forward pass over the whole prompt."""
    x = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, -1].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[i]) for i in ids]


def test_soft_label_is_the_softmax_over_1_and_2_and_sums_to_one(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = HFPairwiseLabeler(model, tok, position_debias=False, batch_size=3)
    res = lab.preference(PROMPTS, A, B)
    ids = [single_token_id(tok, "1"), single_token_id(tok, "2")]
    for p, a, b, r in zip(PROMPTS, A, B, res, strict=True):
        # The prompt's structure: chat template, preamble, sample, ending "Preferred Response=".
        text = lab.parts(p, a, b).text
        assert text.rstrip().endswith(P.PAIRWISE_ENDING)
        assert P.BASE_PREAMBLE in text and "<|im_start|>assistant" in text
        l1, l2 = _full_next_token_logprobs(model, tok, text, ids)
        p1, p2 = math.exp(l1) / (math.exp(l1) + math.exp(l2)), math.exp(l2) / (math.exp(l1) + math.exp(l2))
        assert r.p_a == pytest.approx(p1, abs=1e-5)
        assert r.p_a + p2 == pytest.approx(1.0, abs=1e-6)
        assert 0.0 < r.p_a < 1.0
        assert r.p_a_ba is None and r.consistent is None


def test_swapping_the_order_swaps_the_label(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = HFPairwiseLabeler(model, tok, batch_size=4)
    ab = lab.preference(PROMPTS, A, B)
    ba = lab.preference(PROMPTS, B, A)
    for x, y in zip(ab, ba, strict=True):
        assert x.p_a == pytest.approx(1.0 - y.p_a, abs=1e-6)
        assert x.p_a_ab == pytest.approx(1.0 - y.p_a_ba, abs=1e-6)
        assert x.consistent == y.consistent
    # without debiasing, the swapped pair's label is 1 - P(second preferred) of the other order
    raw = HFPairwiseLabeler(model, tok, position_debias=False)
    r1 = raw.preference(PROMPTS, A, B)
    r2 = raw.preference(PROMPTS, B, A)
    for x, y, d in zip(r1, r2, ab, strict=True):
        assert d.p_a == pytest.approx(0.5 * (x.p_a + 1.0 - y.p_a), abs=1e-6)


class BiasedScorer(PairwiseLabelerBase):
    """A constructed labeler: the true preference plus a fixed bias towards whatever is shown first."""

    def __init__(self, truth: dict[tuple[str, str], float], bias: float) -> None:
        super().__init__(position_debias=True)
        self.truth, self.bias = truth, bias

    def first_preferred(self, prompts, first, second):
        out = []
        for f, s in zip(first, second, strict=True):
            p_first = self.truth[(f, s)] if (f, s) in self.truth else 1.0 - self.truth[(s, f)]
            out.append(p_first + self.bias)
        return out, [None] * len(first)


def test_debiasing_is_exact_on_a_constructed_biased_scorer():
    truth = {("a1", "b1"): 0.8, ("a2", "b2"): 0.3, ("a3", "b3"): 0.5, ("a4", "b4"): 0.55}
    lab = BiasedScorer(truth, bias=0.15)
    res = lab.preference(["p"] * 4, ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"])
    assert [r.p_a for r in res] == pytest.approx([0.8, 0.3, 0.5, 0.55], abs=1e-12)
    assert [r.p_a_ab for r in res] == pytest.approx([0.95, 0.45, 0.65, 0.70], abs=1e-12)
    assert [r.p_a_ba for r in res] == pytest.approx([0.65, 0.15, 0.35, 0.40], abs=1e-12)
    # 0.8 survives the bias in both orders; 0.55 does not (0.70 vs 0.40): inconsistent.
    assert [r.consistent for r in res] == [True, True, False, False]
    lab.position_debias = False
    assert [r.p_a for r in lab.preference(["p"], ["a1"], ["b1"])] == pytest.approx([0.95])


def test_combine_orders_and_result_json():
    r = combine_orders(0.9, 0.2)
    assert isinstance(r, PreferenceResult)
    assert r.p_a == pytest.approx(0.85) and r.p_a_ba == pytest.approx(0.8) and r.consistent
    assert r.confidence == pytest.approx(0.7)
    assert set(r.to_json()) == {"p_a", "p_a_ab", "p_a_ba", "consistent"}


def test_pointwise_is_invariant_to_pair_order(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = HFPointwiseLabeler(
        model, tok, principles=["Is the response relevant?", "Is it correct?"], batch_size=3
    )
    ab = lab.preference(PROMPTS, A, B)
    ba = lab.preference(PROMPTS, B, A)
    for x, y in zip(ab, ba, strict=True):
        assert x.p_a == pytest.approx(1.0 - y.p_a, abs=1e-6)
        assert x.p_a_ab == x.p_a_ba == x.p_a and x.consistent is True
        assert len(x.details["logodds_a"]) == 2
    same = lab.preference(PROMPTS[:2], A[:2], A[:2])
    assert [r.p_a for r in same] == pytest.approx([0.5, 0.5], abs=1e-9)


def test_pointwise_label_is_the_mean_sigmoid_of_logodds_differences(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    principles = ["Is the response relevant?", "Is it correct?"]
    lab = HFPointwiseLabeler(model, tok, principles=principles)
    yes, no = single_token_id(tok, "Yes"), single_token_id(tok, "No")
    fmt = P.ChatFormatter(tok)

    def logodds(prompt: str, response: str, q: str) -> float:
        text = fmt.parts(P.pointwise_head(None), P.pointwise_body(prompt, response, q), "").text
        ly, ln = _full_next_token_logprobs(model, tok, text, [yes, no])
        return ly - ln

    r = lab.preference(PROMPTS[:1], A[:1], B[:1])[0]
    want = (
        sum(
            1 / (1 + math.exp(-(logodds(PROMPTS[0], A[0], q) - logodds(PROMPTS[0], B[0], q))))
            for q in principles
        )
        / 2
    )
    assert r.p_a == pytest.approx(want, abs=1e-5)
    scores = lab.score(PROMPTS[:1], A[:1])
    assert -1.0 <= scores[0] <= 1.0


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_prefix_cached_equals_uncached(tiny_model_and_tokenizer, batch_size):
    model, tok = tiny_model_and_tokenizer
    few = [
        type(
            "Ex",
            (),
            {"prompt": "2+2?", "response_a": "4", "response_b": "5", "preferred": 1, "rationale": None},
        )()
    ]
    for kwargs in ({}, {"preamble": "detailed"}):
        cached = HFPairwiseLabeler(model, tok, batch_size=batch_size, few_shot=few, **kwargs)
        plain = HFPairwiseLabeler(
            model, tok, batch_size=batch_size, few_shot=few, use_prefix_cache=False, **kwargs
        )
        x = cached.preference(PROMPTS, A, B)
        y = plain.preference(PROMPTS, A, B)
        for u, v in zip(x, y, strict=True):
            assert u.p_a_ab == pytest.approx(v.p_a_ab, abs=1e-4)
            assert u.p_a_ba == pytest.approx(v.p_a_ba, abs=1e-4)
    pw_c = HFPointwiseLabeler(model, tok, principles=["Relevant?"], batch_size=batch_size)
    pw_u = HFPointwiseLabeler(
        model, tok, principles=["Relevant?"], batch_size=batch_size, use_prefix_cache=False
    )
    for u, v in zip(pw_c.logodds(PROMPTS, A), pw_u.logodds(PROMPTS, A), strict=True):
        assert u == pytest.approx(v, abs=1e-4)


def test_prefix_scorer_matches_unpadded_reference_and_reuses_the_head(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    scorer = PrefixScorer(model, tok, batch_size=4)
    head = "A shared preamble that every item starts with.\n\n"
    suffixes = [
        scorer.encode(s) for s in ["short", "a much longer suffix with many words in it", "mid length one"]
    ]
    ids = [5, 17, 42]
    got = scorer.logprobs(head, suffixes, ids, n_last=2)
    calls = []
    handle = model.register_forward_pre_hook(
        lambda m, a, k: calls.append(k.get("input_ids").shape), with_kwargs=True
    )
    try:
        scorer.logprobs(head, suffixes, ids)
    finally:
        handle.remove()
    # the head is cached: the second call runs only the suffixes, in one batch
    assert len(calls) == 1 and calls[0][1] == max(len(s) for s in suffixes)
    for s, g in zip(suffixes, got, strict=True):
        full = torch.tensor([scorer.head_ids(head) + s])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=full).logits[0, -2:].float(), -1)
        want = lp[:, ids].tolist()
        assert g[0] == pytest.approx(want[0], abs=1e-4) and g[1] == pytest.approx(want[1], abs=1e-4)


def test_single_token_check_fails_clearly():
    class Tok:
        name_or_path = "fake"

        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="not a single token"):
        single_token_id(Tok(), "1")


def test_chain_of_thought_generates_a_rationale_then_scores(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = HFPairwiseLabeler(model, tok, chain_of_thought=True, cot_max_new_tokens=5, batch_size=2)
    res = lab.preference(PROMPTS[:2], A[:2], B[:2])
    for r in res:
        assert isinstance(r.rationale_ab, str) and isinstance(r.rationale_ba, str)
        assert 0.0 < r.p_a < 1.0
    # step two is the ordinary scoring with the rationale in the sample
    plain = HFPairwiseLabeler(model, tok, chain_of_thought=True, position_debias=False)
    text = plain.parts(PROMPTS[0], A[0], B[0], res[0].rationale_ab).text
    assert P.COT_ENDING in text
    ids = [single_token_id(tok, "1"), single_token_id(tok, "2")]
    l1, l2 = _full_next_token_logprobs(model, tok, text, ids)
    assert res[0].p_a_ab == pytest.approx(1 / (1 + math.exp(l2 - l1)), abs=1e-5)
