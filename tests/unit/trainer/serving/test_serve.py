"""``rlaif-train serve``: the engine against a direct forward, the HTTP API through the real openai
labeler client, and the CLI as the labeler server's pod runs it.

Everything is real: the tiny model (and, in the slow test, the embedded SmolLM2) served on loopback
by the real aiohttp app, spoken to by :mod:`rlaif_trainer.feedback.openai`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.base import LabelerError
from rlaif_trainer.feedback.openai import CompletionsClient, OpenAIPairwiseLabeler, OpenAIPointwiseLabeler
from rlaif_trainer.serving.engine import CompletionEngine, SamplingParams
from rlaif_trainer.serving.server import BATCHER, ServeOptions, build_app
from tests.unit.trainer.http_support import serve_in_thread

SECRET = "serve-test-key-not-a-real-one"


@contextmanager
def served(engine: CompletionEngine, **options) -> Iterator[tuple[str, object]]:
    """The real app on 127.0.0.1; yields its /v1 URL and the app."""
    app = build_app(engine, ServeOptions(model_name="tiny", **options))
    with serve_in_thread(app) as url:
        yield f"{url}/v1", app


def post(url: str, body: dict, *, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def engine(tiny_model_and_tokenizer) -> CompletionEngine:
    model, tok = tiny_model_and_tokenizer
    return CompletionEngine(model, tok, max_logprobs=20, max_model_len=256)


def direct_logprobs(engine: CompletionEngine, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_one_token_answer_is_the_direct_forwards_top_logprobs(engine):
    ids = engine.tokenizer.encode("Which is better? Preferred Response=", add_special_tokens=False)
    (res,) = engine.complete([ids], SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=5))
    expected = direct_logprobs(engine, ids)
    top_lp, top_id = expected.topk(5)
    assert [t.token_id for t in res.top[0]] == top_id.tolist()
    assert [t.logprob for t in res.top[0]] == pytest.approx(top_lp.tolist(), abs=1e-5)
    assert res.token_ids == [int(top_id[0])]  # greedy
    assert res.chosen[0].logprob == pytest.approx(float(top_lp[0]), abs=1e-5)


def test_greedy_decode_matches_hf_generate_and_teacher_forcing(engine):
    tok = engine.tokenizer
    ids = tok.encode("The capital of France is", add_special_tokens=False)
    (res,) = engine.complete([ids], SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=0))
    with torch.no_grad():
        hf = engine.model.generate(
            torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(ids) :].tolist()
    stop = engine.stop_ids
    cut = next((i + 1 for i, t in enumerate(hf) if t in stop), len(hf))
    assert res.token_ids == hf[:cut]
    # each chosen token's logprob is the teacher-forced one at its position
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids + res.token_ids])).logits[0].float()
    lps = torch.log_softmax(logits, dim=-1)
    for j, t in enumerate(res.chosen):
        assert t.logprob == pytest.approx(float(lps[len(ids) - 1 + j, t.token_id]), abs=1e-4)


def test_a_batch_gives_what_each_prompt_gives_alone(engine):
    tok = engine.tokenizer
    prompts = [
        tok.encode(t, add_special_tokens=False) for t in ("Yes or No?", "A longer prompt about the sky: Yes")
    ]
    params = SamplingParams(max_tokens=3, temperature=0.0, top_logprobs=4)
    together = engine.complete(prompts, params)
    for p, res in zip(prompts, together, strict=True):
        (alone,) = engine.complete([p], params)
        assert res.token_ids == alone.token_ids
        assert [t.logprob for t in res.top[0]] == pytest.approx([t.logprob for t in alone.top[0]], abs=1e-4)


def test_a_seeded_sample_repeats_and_leaves_the_global_rng_alone(engine):
    ids = engine.tokenizer.encode("Tell me a story", add_special_tokens=False)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = engine.complete([ids], params)[0].token_ids
    assert torch.equal(torch.random.get_rng_state(), before)
    assert engine.complete([ids], params)[0].token_ids == a


def test_bad_requests_are_400_with_the_reason(engine):
    with served(engine) as (url, _):
        status, body = post(f"{url}/completions", {"prompt": "x " * 300, "max_tokens": 1})
        assert status == 400 and "maximum context length is 256" in body["error"]["message"]
        status, body = post(f"{url}/completions", {"prompt": "hi", "max_tokens": 1, "logprobs": 50})
        assert status == 400 and "--max-logprobs" in body["error"]["message"]
        status, body = post(f"{url}/completions", {"prompt": 3})
        assert status == 400 and "prompt must be" in body["error"]["message"]
        status, body = post(f"{url}/chat/completions", {"messages": "hi"})
        assert status == 400 and "messages must be" in body["error"]["message"]
        # the client maps a 400 to bad input, which the stage does not retry
        client = CompletionsClient(url, "tiny", max_retries=0)
        with pytest.raises(BadInputError):
            client.top_logprobs(["word " * 300], lambda top: top)


def test_api_key_is_required_and_never_echoed(engine):
    with served(engine, api_key=SECRET) as (url, _):
        status, body = post(f"{url}/completions", {"prompt": "hi", "max_tokens": 1})
        assert status == 401 and SECRET not in json.dumps(body)
        status, body = post(f"{url}/completions", {"prompt": "hi", "max_tokens": 1}, key=SECRET)
        assert status == 200 and body["choices"][0]["finish_reason"] in {"stop", "length"}
        with pytest.raises((BadInputError, LabelerError)):
            CompletionsClient(url, "tiny", api_key="wrong", max_retries=0).top_logprobs(["hi"], lambda t: t)


def _top_map(engine: CompletionEngine, text: str, k: int = 20) -> dict[str, float]:
    """What the openai client reads from a vLLM answer for ``text``: the top ``k`` of a direct
    forward, keyed by the token's text without its spaces, the likelier kept."""
    lps = direct_logprobs(engine, engine.tokenizer.encode(text, add_special_tokens=True))
    top_lp, top_id = lps.topk(k)
    top: dict[str, float] = {}
    for lp, i in zip(top_lp.tolist(), top_id.tolist(), strict=True):
        key = engine.tokenizer.decode([i]).strip()
        top[key] = max(top.get(key, float("-inf")), lp)
    return top


def test_the_openai_client_reads_the_served_models_logprobs_batched(engine):
    """Eight concurrent requests through the real client: each answer is the direct forward's top
    20, and the server ran them in fewer batches than requests."""
    texts = [f"Question {i}: is this {'good ' * i}? Answer=" for i in range(8)]
    with served(engine) as (url, app):
        client = CompletionsClient(url, "tiny", max_concurrency=8, max_retries=0)
        got = client.top_logprobs(texts, lambda top: top)
        batches = app[BATCHER].batches
    for text, top in zip(texts, got, strict=True):
        expected = _top_map(engine, text)
        assert top.keys() == expected.keys()
        assert [top[k] for k in expected] == pytest.approx(list(expected.values()), abs=1e-4)
    assert 1 <= batches < len(texts)


def test_a_labeler_answer_without_its_tokens_is_malformed_as_from_vllm(engine):
    """The tiny model ranks neither "Yes" nor "No" in its top 20 here: the client calls the answer
    malformed (and would retry), exactly as it does for such a vLLM answer."""
    prompt, response, principle = "What is 2 + 2?", "4", "Is it helpful?"
    with served(engine) as (url, _):
        pointwise = OpenAIPointwiseLabeler(endpoint=url, model="tiny", principles=[principle], max_retries=0)
        text = pointwise.head + P.pointwise_body(prompt, response, principle) + "Answer="
        top = _top_map(engine, text)
        assert "Yes" not in top and "No" not in top  # the premise; a model change would need a new case
        with pytest.raises(LabelerError):
            pointwise.logodds([prompt], [response])


def test_chat_api_shape(engine):
    with served(engine) as (url, _):
        status, body = post(
            f"{url}/chat/completions",
            {
                "messages": [{"role": "user", "content": "Say yes"}],
                "max_tokens": 2,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 3,
            },
        )
        assert status == 200 and body["object"] == "chat.completion"
        (choice,) = body["choices"]
        first = choice["logprobs"]["content"][0]
        assert set(first) == {"token", "logprob", "bytes", "top_logprobs"} and len(first["top_logprobs"]) == 3
        assert first["top_logprobs"][0]["logprob"] >= first["top_logprobs"][1]["logprob"]
        assert body["usage"]["completion_tokens"] == len(choice["logprobs"]["content"])
        # the chat-formatted prompt is what the model continued
        tok = engine.tokenizer
        ids = tok.encode(
            tok.apply_chat_template(
                [{"role": "user", "content": "Say yes"}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        assert body["usage"]["prompt_tokens"] == len(ids)
        assert first["top_logprobs"][0]["logprob"] == pytest.approx(
            float(direct_logprobs(engine, ids).max()), abs=1e-4
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # starts the CLI in a subprocess (torch import and model load: ~10 s)
def test_cli_serves_until_terminated(tiny_model_dir: Path, tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "SERVE_KEY": SECRET, "RLAIF_DEVICE": "cpu"}
    exe = Path(sys.executable).with_name("rlaif-train")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            str(tiny_model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "tiny",
            "--api-key-env",
            "SERVE_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "rlaif-train serve did not become ready"
            time.sleep(0.5)
        status, body = post(
            f"http://127.0.0.1:{port}/v1/completions",
            {"model": "tiny", "prompt": "hi", "max_tokens": 1, "logprobs": 2},
            key=SECRET,
        )
        assert status == 200 and len(body["choices"][0]["logprobs"]["top_logprobs"][0]) >= 1
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {SECRET}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "tiny"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert SECRET not in out


def test_cli_refuses_an_unset_key_variable(tiny_model_dir: Path):
    from rlaif_trainer.cli import main

    os.environ.pop("RLAIF_TEST_UNSET_KEY", None)
    assert main(["serve", str(tiny_model_dir), "--api-key-env", "RLAIF_TEST_UNSET_KEY"]) == 65


@pytest.mark.slow  # loads the embedded SmolLM2-135M (fetched once from PyPI, then cached)
def test_served_embedded_model_labels_as_the_in_process_hf_labeler():
    """The same model, in process and behind ``rlaif-train serve``, gives the same soft labels
    (pairwise, both orders) and log-odds (pointwise) for the same prompt text (no chat template
    on either side, as the completions API sends plain text)."""
    from rlaif_trainer.feedback.hf import HFPairwiseLabeler, HFPointwiseLabeler
    from rlaif_trainer.modeling.loading import load_causal_lm

    model, tok = load_causal_lm("embedded:smollm2-135m-instruct", device="cpu", dtype="float32")
    model.eval()
    prompts = ["What is the capital of France?", "Give me a tip for sleeping better.", "What do bees make?"]
    good = ["The capital of France is Paris.", "Go to bed at the same time every night.", "Bees make honey."]
    bad = ["Bananas are yellow.", "The train departs at nine.", "My team lost again."]
    principles = ["Does the response answer the question?"]
    with served(CompletionEngine(model, tok, max_logprobs=20)) as (url, _):
        served_pair = OpenAIPairwiseLabeler(endpoint=url, model="tiny", max_retries=0).preference(
            prompts, good, bad
        )
        served_point = OpenAIPointwiseLabeler(endpoint=url, model="tiny", principles=principles).logodds(
            prompts, good
        )
    local_pair = HFPairwiseLabeler(model, tok, use_chat_template=False).preference(prompts, good, bad)
    local_point = HFPointwiseLabeler(model, tok, principles=principles, use_chat_template=False).logodds(
        prompts, good
    )
    # 2e-3: batched, padded and prefix-cached forwards differ from a plain one in float32 rounding
    assert [r.p_a for r in served_pair] == pytest.approx([r.p_a for r in local_pair], abs=2e-3)
    assert [row[0] for row in served_point] == pytest.approx([row[0] for row in local_point], abs=2e-3)


def test_a_served_labeler_outside_a_cluster_is_bad_input_saying_what_to_do():
    import rlaif_api as api
    from rlaif_trainer.feedback.build import build_labeler

    spec = api.LabelerSpec.model_validate(
        {"provider": "openai", "model": "judge", "server": {"engine": "rlaif", "model": "embedded:x"}}
    )
    with pytest.raises(BadInputError, match="rlaif-train serve"):
        build_labeler(spec)
