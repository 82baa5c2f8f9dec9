"""Labeler and sampling bugs of issue 13, each pinned by a test on the tiny local model.

* the labeler prompt is tokenised in one piece, not as head + rest (the seam tokens differed);
* two-step chain-of-thought keeps the reasoning instruction and the rationale in the answer turn;
* d-RLAIF: "1" followed by another digit is not a score of 1;
* candidate pairs are sampled without transformers' default top-k of 50, as RL samples.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.hf import HFPairwiseLabeler, HFPointwiseLabeler
from rlaif_trainer.feedback.prefix import PrefixScorer, single_token_id
from rlaif_trainer.feedback.scoring import DirectScorer


def _last_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def test_a_seam_inside_a_word_is_tokenised_as_the_full_text(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    head = "Rate the response. A good s"
    texts = [head + "ummary text.", head + "ummary of the river?"]
    # The precondition that makes the test bite: tokenising the head apart gives other tokens.
    split = tok.encode(head, add_special_tokens=False) + tok.encode("ummary text.", add_special_tokens=False)
    assert split != tok.encode(texts[0], add_special_tokens=False)
    ids = [single_token_id(tok, "Yes"), single_token_id(tok, "No")]
    for cached in (True, False):
        scorer = PrefixScorer(model, tok, batch_size=2, use_prefix_cache=cached)
        got = scorer.logprobs_texts(head, texts, ids)
        for text, g in zip(texts, got, strict=True):
            want = _last_logprobs(model, tok.encode(text, add_special_tokens=False))[ids].tolist()
            assert g[-1] == pytest.approx(want, abs=1e-4)


def test_logprobs_texts_refuses_a_text_without_the_head(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="item 1"):
        PrefixScorer(model, tok).logprobs_texts("Head: ", ["Head: a", "Other: b"], [1])


def test_pointwise_and_pairwise_labelers_read_the_full_texts_tokens(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    prompts = ["Summarize: The city council approved a new park near the river on Monday."] * 2
    responses = ["The council approved a riverside park.", "Bananas are yellow."]
    lab = HFPointwiseLabeler(model, tok, principles=["Is the response a summary?"], batch_size=2)
    yes, no = lab.ids
    for p, r, lo in zip(prompts, responses, lab.logodds(prompts, responses), strict=True):
        text = lab.fmt.parts(lab.head, P.pointwise_body(p, r, lab.principles[0]), lab.ending).text
        lp = _last_logprobs(model, tok.encode(text, add_special_tokens=False))
        assert lo[0] == pytest.approx(float(lp[yes] - lp[no]), abs=1e-4)
    pw = HFPairwiseLabeler(model, tok, position_debias=False, batch_size=2)
    res = pw.preference(prompts[:1], responses[:1], responses[1:])[0]
    lp = _last_logprobs(
        model, tok.encode(pw.parts(prompts[0], responses[0], responses[1]).text, add_special_tokens=False)
    )
    l1, l2 = float(lp[pw.ids[0]]), float(lp[pw.ids[1]])
    assert res.p_a == pytest.approx(1 / (1 + math.exp(l2 - l1)), abs=1e-4)


def test_chain_of_thought_step_two_extends_step_one_in_the_answer_turn(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    lab = HFPairwiseLabeler(model, tok, chain_of_thought=True, position_debias=False)
    step1 = lab.fmt.parts(lab.head, P.cot_body("Q?", "one", "two"), P.COT_ENDING).text
    step2 = lab.parts("Q?", "one", "two", "Response 1 is accurate.").text
    # Step two is step one continued: the instruction is still there, and the rationale follows the
    # assistant-turn opening (where it was generated), not inside the user's message.
    assert step2.startswith(step1)
    assert P.COT_INSTRUCTION in step2
    assert step2[len(step1) :] == " Response 1 is accurate.\n" + P.PAIRWISE_ENDING
    assert step2.index("Response 1 is accurate.") > step2.index(lab.fmt.post)


def test_one_followed_by_another_digit_is_not_a_score_of_one(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    model = tiny_model_and_tokenizer[0]
    ds = DirectScorer(model, tok)
    tid = {d: tok.encode(d, add_special_tokens=False)[0] for d in "0123456789"}
    # After the prompt: "1" has P 0.5, "7" 0.5. After "1": "5" 0.6 ("15", off the scale), "0" 0.2.
    first = {t: 0.0 for t in ds.read_ids}
    first[tid["1"]], first[tid["7"]] = 0.5, 0.5
    after = {t: 0.0 for t in ds.read_ids}
    after[tid["5"]], after[tid["0"]] = 0.6, 0.2
    probs = ds.combine(first, after)
    # Unnormalised: P(1) = 0.5 * (1 - 0.6 - 0.2) = 0.1, P(10) = 0.5 * 0.2 = 0.1, P(7) = 0.5.
    want = [0.1, 0, 0, 0, 0, 0, 0.5, 0, 0, 0.1]
    assert probs == pytest.approx([w / 0.7 for w in want])


def test_candidates_are_sampled_without_top_k(tiny_model_and_tokenizer, tmp_path):
    """At a very high temperature nearly every token is possible; with transformers' default top-k
    of 50 the first sampled tokens would come from 50 ids at most."""
    from rlaif_trainer.feedback.candidates import generate_candidates

    model, tok = tiny_model_and_tokenizer
    prompts = [{"id": f"p{i}", "prompt": f"Say something about item {i}."} for i in range(60)]
    recs = generate_candidates(
        model,
        tok,
        prompts,
        tmp_path / "c.jsonl",
        temperature=50.0,
        max_new_tokens=1,
        batch_size=60,
        progress=False,
    )
    firsts = {
        tuple(tok.encode(r[k], add_special_tokens=False)[:1])
        for r in recs
        for k in ("response_a", "response_b")
    }
    assert len(firsts) > 50
