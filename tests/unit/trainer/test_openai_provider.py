"""The ``openai`` provider against a fake OpenAI-compatible server on loopback.

The fake server stands in for vLLM's ``/v1/completions`` endpoint (``logprobs`` → ``top_logprobs``):
it prefers the response that contains "good", and can be told to answer 429, 500, malformed JSON
or a body without logprobs first, so retries, backoff and error handling are exercised for real over
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

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.labelers import LabelerError, build_labeler
from rlaif_trainer.labelers.openai import OpenAIPairwiseLabeler, OpenAIPointwiseLabeler
from rlaif_trainer.spec import LabelerSpec

SECRET = "sk-test-secret-value-123"


@dataclass
class FakeVLLM:
    """Behaviour switches: a queue of failures served before good answers, and counters."""

    failures: list[str] = field(default_factory=list)
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str | None] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, prompt: str) -> dict:
        m1 = re.findall(r"Response 1 - (.*)", prompt)
        m2 = re.findall(r"Response 2 - (.*)", prompt)
        if m1 and m2:  # pairwise: the last sample in the prompt (after any few-shot examples)
            good1, good2 = "good" in m1[-1], "good" in m2[-1]
            l1, l2 = (-0.2, -1.8) if good1 and not good2 else (-1.8, -0.2) if good2 and not good1 else (-0.7, -0.7)
            top = {"1": l1, " 2": l2, "The": -3.0}
        else:  # pointwise
            resp = re.findall(r"Response - (.*)", prompt)[-1]
            top = {"Yes": -0.3, "No": -1.5} if "good" in resp else {"Yes": -1.5, "No": -0.3}
        return {"id": "cmpl-1", "object": "text_completion",
                "choices": [{"index": 0, "text": "1", "logprobs": {"tokens": ["1"], "top_logprobs": [top]}}]}


@pytest.fixture
def server() -> Iterator[tuple[str, FakeVLLM]]:
    state = FakeVLLM()

    async def completions(request: web.Request) -> web.Response:
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.auth.append(request.headers.get("Authorization"))
            failure = state.failures.pop(0) if state.failures else None
        try:
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            body = await request.json()
            if failure == "429":
                return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
            if failure == "500":
                return web.Response(status=500, text="oops")
            if failure == "401":
                return web.Response(status=401, text="bad key")
            if failure == "garbage":
                return web.Response(status=200, text="{not json", content_type="application/json")
            if failure == "nologprobs":
                return web.json_response({"choices": [{"text": "1"}]})
            return web.json_response(state.answer(body["prompt"]))
        finally:
            with state.lock:
                state.in_flight -= 1

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _pairwise(url: str, **kw) -> OpenAIPairwiseLabeler:
    return OpenAIPairwiseLabeler(endpoint=url, model="served-model", api_key=SECRET, backoff_base_s=0.01, **kw)


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
    lab = OpenAIPointwiseLabeler(endpoint=url, model="m", principles=["Helpful?", "Correct?"], backoff_base_s=0.01)
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
        return {"choices": [{"text": "7", "logprobs": {"top_logprobs": [{"7": math.log(0.5), "9": math.log(0.5)}]}}]}

    state.answer = answer  # type: ignore[method-assign]
    s = _pairwise(url).score(["q"], ["r"])
    assert s == pytest.approx([2 * (8 - 1) / 8 - 1])
