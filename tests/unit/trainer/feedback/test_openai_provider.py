"""The ``openai`` provider against a fake OpenAI-compatible server on loopback.

The fake server stands in for vLLM's ``/v1/completions`` endpoint (``logprobs`` → ``top_logprobs``)
and its ``/v1/chat/completions`` endpoint (``logprobs: true, top_logprobs: K`` →
``choices[0].logprobs.content[0].top_logprobs``, the shape OpenAI's chat API returns too): it
prefers the response that contains "good", and can be told to answer 429, 500, malformed JSON or a
body without logprobs first, so retries, backoff and error handling are exercised for real over
HTTP (aiohttp on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from rlaif_api import LabelerSpec
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.base import LabelerError
from rlaif_trainer.feedback.build import build_labeler
from rlaif_trainer.feedback.openai import CompletionsClient, OpenAIPairwiseLabeler, OpenAIPointwiseLabeler
from tests.unit.trainer.http_support import serve_in_thread

SECRET = "sk-test-secret-value-123"


@dataclass
class FakeVLLM:
    """Behaviour switches: a queue of failures served before good answers, and counters."""

    failures: list[str] = field(default_factory=list)
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, prompt: str) -> dict:
        m1 = re.findall(r"Response 1 - (.*)", prompt)
        m2 = re.findall(r"Response 2 - (.*)", prompt)
        if m1 and m2:  # pairwise: the last sample in the prompt (after any few-shot examples)
            good1, good2 = "good" in m1[-1], "good" in m2[-1]
            l1, l2 = (
                (-0.2, -1.8) if good1 and not good2 else (-1.8, -0.2) if good2 and not good1 else (-0.7, -0.7)
            )
            top = {"1": l1, " 2": l2, "The": -3.0}
        else:  # pointwise
            resp = re.findall(r"Response - (.*)", prompt)[-1]
            top = {"Yes": -0.3, "No": -1.5} if "good" in resp else {"Yes": -1.5, "No": -0.3}
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "1", "logprobs": {"tokens": ["1"], "top_logprobs": [top]}}],
        }

    def chat_answer(self, content: str, top_logprobs: int) -> dict:
        """The same judgement in the chat shape: the top list of the first generated token."""
        top = self.answer(content)["choices"][0]["logprobs"]["top_logprobs"][0]
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:top_logprobs]
        entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked]
        first = entries[0]
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": first["token"]},
                    "logprobs": {"content": [{**first, "top_logprobs": entries}]},
                }
            ],
        }


@pytest.fixture
def server() -> Iterator[tuple[str, FakeVLLM]]:
    state = FakeVLLM()

    async def completions(request: web.Request) -> web.Response:
        chat = request.path.endswith("/chat/completions")
        with state.lock:
            state.requests += 1
            state.paths.append(request.path)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.auth.append(request.headers.get("Authorization"))
            failure = state.failures.pop(0) if state.failures else None
        try:
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            body = await request.json()
            state.bodies.append(body)
            if failure == "429":
                return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
            if failure == "500":
                return web.Response(status=500, text="oops")
            if failure == "401":
                return web.Response(status=401, text="bad key")
            if failure == "garbage":
                return web.Response(status=200, text="{not json", content_type="application/json")
            if failure == "nologprobs":
                if chat:  # what a chat server sends when logprobs were not asked for
                    return web.json_response(
                        {"choices": [{"message": {"role": "assistant", "content": "1"}, "logprobs": None}]}
                    )
                return web.json_response({"choices": [{"text": "1"}]})
            if chat:
                (message,) = body["messages"]
                assert message["role"] == "user"
                if not body.get("logprobs"):  # chain-of-thought's rationale: text only
                    return web.json_response(
                        {"choices": [{"message": {"role": "assistant", "content": " It is better. "}}]}
                    )
                return web.json_response(state.chat_answer(message["content"], body["top_logprobs"]))
            return web.json_response(state.answer(body["prompt"]))
        finally:
            with state.lock:
                state.in_flight -= 1

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    with serve_in_thread(app) as url:
        yield f"{url}/v1", state


def _pairwise(url: str, **kw) -> OpenAIPairwiseLabeler:
    return OpenAIPairwiseLabeler(
        endpoint=url, model="served-model", api_key=SECRET, backoff_base_s=0.01, **kw
    )


PROMPTS = ["q1", "q2", "q3"]
A = ["a good answer", "meh", "a good one"]
B = ["meh", "a good answer", "another good one"]


def test_pairwise_soft_labels_debiased_over_http(server):
    url, state = server
    res = _pairwise(url).preference(PROMPTS, A, B)
    p_good = 1 / (1 + math.exp(-1.6))
    assert res[0].p_a == pytest.approx(p_good) and res[0].consistent
    assert res[1].p_a == pytest.approx(1 - p_good) and res[1].consistent
    assert res[2].p_a == pytest.approx(0.5) and not res[2].consistent
    assert state.requests == 6  # both orders
    assert set(state.auth) == {f"Bearer {SECRET}"}


def test_pointwise_over_http(server):
    url, _ = server
    lab = OpenAIPointwiseLabeler(
        endpoint=url, model="m", principles=["Helpful?", "Correct?"], backoff_base_s=0.01
    )
    r = lab.preference(["q"], ["good"], ["bad"])[0]
    assert r.p_a == pytest.approx(1 / (1 + math.exp(-2.4)))
    assert lab.preference(["q"], ["bad"], ["good"])[0].p_a == pytest.approx(1 - r.p_a)


def test_retries_429_500_and_malformed_responses_then_succeeds(server, caplog):
    url, state = server
    state.failures = ["429", "500", "garbage", "nologprobs"]
    caplog.set_level(logging.WARNING)
    res = _pairwise(url, max_retries=5, max_concurrency=1).preference(PROMPTS[:1], A[:1], B[:1])
    assert res[0].p_a > 0.5
    assert state.requests == 6  # 4 failures retried + 2 good answers
    text = caplog.text
    assert "HTTP 429" in text and "HTTP 500" in text and "malformed" in text
    assert SECRET not in text  # the key is never logged


def test_gives_up_after_max_retries(server):
    url, state = server
    state.failures = ["500"] * 10
    lab = _pairwise(url, max_retries=2, max_concurrency=1, position_debias=False)
    with pytest.raises(LabelerError, match="after 3 attempts: HTTP 500") as err:
        lab.preference(["q"], ["a"], ["b"])
    assert SECRET not in str(err.value) and SECRET not in repr(lab.client)
    assert state.requests == 3


def test_auth_failure_is_permanent_and_does_not_leak_the_key(server):
    url, state = server
    state.failures = ["401"]
    with pytest.raises(BadInputError, match="HTTP 401") as err:
        _pairwise(url, position_debias=False).preference(["q"], ["a"], ["b"])
    assert SECRET not in str(err.value) and state.requests == 1


def test_concurrency_limit(server):
    url, state = server
    state.delay_s = 0.05
    _pairwise(url, max_concurrency=3).preference(["q"] * 10, ["good"] * 10, ["bad"] * 10)
    assert state.requests == 20 and state.max_in_flight <= 3 and state.max_in_flight >= 2


def test_build_labeler_reads_the_key_from_the_environment(server, monkeypatch):
    url, state = server
    monkeypatch.setenv("RLAIF_LABELER_API_KEY", "sk-from-secret")
    spec = LabelerSpec(provider="openai", endpoint=url, model="served", max_retries=1)
    lab = build_labeler(spec)
    assert lab.preference(["q"], ["good"], ["bad"])[0].p_a > 0.5
    assert set(state.auth) == {"Bearer sk-from-secret"}
    assert "sk-from-secret" not in json.dumps(spec.model_dump())


def test_direct_score_over_http(server):
    url, state = server

    # the fake answers score prompts with the pointwise branch: make it a score distribution instead
    def answer(prompt: str) -> dict:
        return {
            "choices": [
                {"text": "7", "logprobs": {"top_logprobs": [{"7": math.log(0.5), "9": math.log(0.5)}]}}
            ]
        }

    state.answer = answer  # type: ignore[method-assign]
    s = _pairwise(url).score(["q"], ["r"])
    assert s == pytest.approx([2 * (8 - 1) / 8 - 1])


# --- api: chat (POST /chat/completions, answer in choices[0].logprobs.content[0].top_logprobs) ---


def _softmax_first(l1: float, l2: float) -> float:
    return math.exp(l1) / (math.exp(l1) + math.exp(l2))


def test_chat_request_shape_and_url(server):
    url, state = server
    lab = _pairwise(url, api="chat", position_debias=False)
    lab.preference(["q"], ["good"], ["bad"])
    assert state.paths == ["/v1/chat/completions"]
    (body,) = state.bodies
    expected_text = lab.head + P.pairwise_body("q", "good", "bad") + P.PAIRWISE_ENDING
    assert body == {
        "model": "served-model",
        "messages": [{"role": "user", "content": expected_text}],
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": 20,
    }


@pytest.mark.parametrize(
    ("endpoint", "api", "url"),
    [
        ("http://h/v1", "chat", "http://h/v1/chat/completions"),
        ("http://h/v1/", "completions", "http://h/v1/completions"),
        ("http://h/v1/completions", "completions", "http://h/v1/completions"),
        ("http://h/v1/completions", "chat", "http://h/v1/chat/completions"),
        ("http://h/v1/chat/completions", "chat", "http://h/v1/chat/completions"),
        ("http://h/v1/chat/completions", "completions", "http://h/v1/completions"),
    ],
)
def test_api_url_under_the_endpoint(endpoint, api, url):
    assert CompletionsClient(endpoint, "m", api=api).url == url


def test_unknown_api_is_refused():
    with pytest.raises(ValueError, match="responses"):
        CompletionsClient("http://h/v1", "m", api="responses")


def test_chat_pairwise_soft_label_is_the_softmax_of_both_orders_averaged(server):
    url, state = server

    # Position-biased on purpose ("1" gets a bonus), so that the two orders differ.
    def answer(prompt: str) -> dict:
        first = re.findall(r"Response 1 - (.*)", prompt)[-1]
        l1, l2 = (-0.3, -1.4) if "good" in first else (-0.6, -0.9)
        return {"choices": [{"logprobs": {"top_logprobs": [{" 1": l1, "2": l2, "Response": -4.0}]}}]}

    state.answer = answer  # type: ignore[method-assign]
    r = _pairwise(url, api="chat").preference(["q"], ["good"], ["bad"])[0]
    p_ab = _softmax_first(-0.3, -1.4)  # A ("good") shown first
    p_ba = 1 - _softmax_first(-0.6, -0.9)  # A shown second: P(A) = P("2")
    assert r.p_a_ab == pytest.approx(p_ab) and r.p_a_ba == pytest.approx(p_ba)
    assert r.p_a == pytest.approx((p_ab + p_ba) / 2)
    assert r.consistent is False  # the bias made B win when shown first
    assert state.paths == ["/v1/chat/completions"] * 2


def test_chat_pointwise(server):
    url, state = server
    lab = OpenAIPointwiseLabeler(
        endpoint=url, model="m", api="chat", principles=["Helpful?", "Correct?"], backoff_base_s=0.01
    )
    r = lab.preference(["q"], ["good"], ["bad"])[0]
    assert r.p_a == pytest.approx(1 / (1 + math.exp(-2.4)))  # sigmoid((-0.3 + 1.5) - (-1.5 + 0.3))
    assert set(state.paths) == {"/v1/chat/completions"} and state.requests == 4
    assert state.bodies[0]["messages"][0]["content"].endswith("Answer Yes or No.\nAnswer=")


def test_chat_direct_score(server):
    url, state = server

    def answer(prompt: str) -> dict:
        assert prompt.endswith("Score (1-9)=")
        top = {"3": math.log(0.2), "7": math.log(0.5), " 9": math.log(0.2), "The": math.log(0.1)}
        return {"choices": [{"logprobs": {"top_logprobs": [top]}}]}

    state.answer = answer  # type: ignore[method-assign]
    s = _pairwise(url, api="chat").score(["q"], ["r"])
    expected = (3 * 0.2 + 7 * 0.5 + 9 * 0.2) / 0.9  # renormalised over the score tokens
    assert s == pytest.approx([2 * (expected - 1) / 8 - 1])


def test_chat_token_missing_from_top_logprobs_gets_the_smallest_shown(server):
    url, state = server

    def answer(prompt: str) -> dict:
        return {"choices": [{"logprobs": {"top_logprobs": [{"1": -0.1, "The": -2.5}]}}]}

    state.answer = answer  # type: ignore[method-assign]
    r = _pairwise(url, api="chat", position_debias=False).preference(["q"], ["a"], ["b"])[0]
    assert r.p_a == pytest.approx(_softmax_first(-0.1, -2.5))


def test_chat_both_tokens_missing_is_malformed(server):
    url, state = server

    def answer(prompt: str) -> dict:
        return {"choices": [{"logprobs": {"top_logprobs": [{"The": -0.1, "**": -2.5}]}}]}

    state.answer = answer  # type: ignore[method-assign]
    lab = _pairwise(url, api="chat", position_debias=False, max_retries=1)
    with pytest.raises(LabelerError, match="after 2 attempts: malformed response: neither '1' nor '2'"):
        lab.preference(["q"], ["a"], ["b"])


def test_chat_retries_429_then_succeeds(server, caplog):
    url, state = server
    state.failures = ["429", "429"]
    caplog.set_level(logging.WARNING)
    res = _pairwise(url, api="chat", max_retries=3, max_concurrency=1, position_debias=False).preference(
        ["q"], ["good"], ["bad"]
    )
    assert res[0].p_a == pytest.approx(_softmax_first(-0.2, -1.8))
    assert state.paths == ["/v1/chat/completions"] * 3
    assert "HTTP 429" in caplog.text and SECRET not in caplog.text


def test_chat_malformed_response_is_a_clear_error(server):
    url, state = server
    state.failures = ["nologprobs"] * 3
    lab = _pairwise(url, api="chat", max_retries=2, max_concurrency=1, position_debias=False)
    with pytest.raises(
        LabelerError,
        match=r"after 3 attempts: malformed response: "
        r"no choices\[0\]\.logprobs\.content\[0\]\.top_logprobs",
    ):
        lab.preference(["q"], ["a"], ["b"])
    assert state.requests == 3


def test_chat_entries_without_logprob_are_malformed(server):
    url, state = server

    def chat_answer(content: str, top_logprobs: int) -> dict:
        return {"choices": [{"logprobs": {"content": [{"token": "1", "top_logprobs": [{"token": "1"}]}]}}]}

    state.chat_answer = chat_answer  # type: ignore[method-assign]
    lab = _pairwise(url, api="chat", max_retries=0, position_debias=False)
    with pytest.raises(LabelerError, match="top_logprobs entries lack token/logprob"):
        lab.preference(["q"], ["a"], ["b"])


def test_chat_two_step_chain_of_thought(server):
    url, state = server
    res = _pairwise(url, api="chat", chain_of_thought=True, position_debias=False).preference(
        ["q"], ["good"], ["bad"]
    )[0]
    assert res.rationale_ab == "It is better." and res.p_a > 0.5
    rationale_req, label_req = state.bodies
    assert rationale_req["max_tokens"] == 96 and "logprobs" not in rationale_req
    assert rationale_req["messages"][0]["content"].endswith(P.COT_INSTRUCTION + "\n" + P.COT_ENDING)
    assert label_req["logprobs"] is True
    assert label_req["messages"][0]["content"].endswith("Rationale - It is better.\n" + P.PAIRWISE_ENDING)


def test_build_labeler_passes_the_api_through(server):
    url, state = server
    judge = build_labeler(
        LabelerSpec(provider="openai", endpoint=url, model="served", api="chat", max_retries=1)
    )
    assert judge.preference(["q"], ["good"], ["bad"])[0].p_a > 0.5
    assert set(state.paths) == {"/v1/chat/completions"}
    state.paths.clear()
    build_labeler(LabelerSpec(provider="openai", endpoint=url, model="served")).preference(
        ["q"], ["good"], ["bad"]
    )
    assert set(state.paths) == {"/v1/completions"}
