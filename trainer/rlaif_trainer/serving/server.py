"""``rlaif-train serve``: an OpenAI-compatible completions and chat endpoint for a local HF model.

For CPU tests and small clusters, where vLLM is not available: the operator-managed labeler server
runs this image and command instead of ``vllm/vllm-openai``, and the label, d-RLAIF and evaluate
stages reach it through the same client (:mod:`rlaif_trainer.feedback.openai`) as they reach vLLM.

The API is the subset those clients use, in vLLM's shapes:

* ``POST /v1/completions``: ``prompt`` (a string or a list of strings), ``max_tokens``,
  ``temperature``, ``top_p``, ``logprobs`` (how many top tokens per position), ``seed``; the answer
  has ``choices[i].text`` and ``choices[i].logprobs.{tokens, token_logprobs, top_logprobs}``.
* ``POST /v1/chat/completions``: ``messages`` through the tokenizer's chat template, ``logprobs:
  true`` and ``top_logprobs``; the answer has ``choices[0].message.content`` and
  ``choices[0].logprobs.content[j].{token, logprob, bytes, top_logprobs}``.
* ``GET /v1/models`` and ``GET /health`` (the readiness probe).

Requests that arrive together are batched: the first request waits ``batch_wait_s`` for others with
the same sampling parameters, up to ``max_batch`` prompts, and they run as one left-padded decode on
one worker thread (the model is not shared between threads). A bad request (too long, too many
logprobs, a malformed body) gets a 400 with the reason, which the client reports as bad input
rather than retrying. With ``api_key`` set, requests need ``Authorization: Bearer <key>``; the key is
never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rlaif_trainer.modeling.chat import format_prompt
from rlaif_trainer.serving.engine import Completion, CompletionEngine, SamplingParams, TokenLogprob

__all__ = ["BATCHER", "ServeOptions", "build_app"]

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class ServeOptions:
    model_name: str
    max_batch: int = 16
    batch_wait_s: float = 0.005
    api_key: str | None = None


@dataclass
class _Pending:
    prompt_ids: list[int]
    future: asyncio.Future[Completion]


@dataclass
class _Batcher:
    """Groups concurrent prompts by sampling params and runs each group as one batch."""

    engine: CompletionEngine
    max_batch: int
    wait_s: float
    queue: asyncio.Queue[tuple[SamplingParams, _Pending]] = field(default_factory=asyncio.Queue)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    batches: int = 0

    async def submit(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        await self.queue.put((params, _Pending(prompt_ids, future)))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            groups: dict[SamplingParams, list[_Pending]] = defaultdict(list)
            groups[first[0]].append(first[1])
            deadline = loop.time() + self.wait_s
            taken = 1
            while taken < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    params, pending = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                groups[params].append(pending)
                taken += 1
            for params, items in groups.items():
                self.batches += 1
                try:
                    results = await loop.run_in_executor(
                        self.executor, self.engine.complete, [p.prompt_ids for p in items], params
                    )
                except Exception as err:  # the model failed: every request in the batch gets a 500
                    log.exception("batch of %d failed", len(items))
                    for p in items:
                        if not p.future.done():
                            p.future.set_exception(err)
                    continue
                for p, res in zip(items, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(res)


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}")
    return value


def _float(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be a number, got {value!r}")
    return float(value)


def _params(body: dict[str, Any], top_logprobs: int) -> SamplingParams:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"seed must be an integer, got {seed!r}")
    return SamplingParams(
        max_tokens=_int(body, "max_tokens", 16),
        temperature=_float(body, "temperature", 1.0),
        top_p=_float(body, "top_p", 1.0),
        top_logprobs=top_logprobs,
        seed=seed,
    )


def _completion_logprobs(c: Completion) -> dict[str, Any]:
    def top_map(top: list[TokenLogprob]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in top:  # two ids can decode to one string; keep the likelier, as a map must
            out[t.token] = max(out.get(t.token, float("-inf")), t.logprob)
        return out

    return {
        "tokens": [t.token for t in c.chosen],
        "token_logprobs": [t.logprob for t in c.chosen],
        "top_logprobs": [top_map(top) for top in c.top] if c.top else None,
    }


def _chat_logprobs(c: Completion) -> dict[str, Any]:
    def entry(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}

    content = []
    for j, t in enumerate(c.chosen):
        item = entry(t)
        item["top_logprobs"] = [entry(x) for x in c.top[j]] if c.top else []
        content.append(item)
    return {"content": content}


def _usage(results: list[Completion]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


#: The app's batcher (its ``batches`` count shows how requests were grouped).
BATCHER = web.AppKey("batcher", _Batcher)


def build_app(engine: CompletionEngine, options: ServeOptions) -> web.Application:
    """The aiohttp application (the batcher starts with it and stops with it)."""
    tok = engine.tokenizer
    batcher = _Batcher(engine, options.max_batch, options.batch_wait_s)

    def error(status: int, message: str) -> web.Response:
        kind = "invalid_request_error" if status == 400 else "authentication_error"
        return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if options.api_key and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {options.api_key}".encode()):
                return error(401, "missing or wrong API key")
        try:
            return await handler(request)
        except BadRequest as err:
            return error(400, str(err))

    async def body_of(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise BadRequest(f"the body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    async def run(prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        for ids in prompts:
            reason = engine.check(ids, params)
            if reason:
                raise BadRequest(reason)
        return list(await asyncio.gather(*(batcher.submit(ids, params) for ids in prompts)))

    def envelope(kind: str, choices: list[dict[str, Any]], results: list[Completion]) -> dict[str, Any]:
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": options.model_name,
            "choices": choices,
            "usage": _usage(results),
        }

    async def completions(request: web.Request) -> web.Response:
        body = await body_of(request)
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("prompt must be a non-empty string or a list of strings")
        top = _int(body, "logprobs", 0)
        # vLLM's default for completions: the tokenizer's special tokens (e.g. a BOS) are added.
        add_special = bool(body.get("add_special_tokens", True))
        prompts = [list(tok.encode(t, add_special_tokens=add_special)) for t in texts]
        results = await run(prompts, _params(body, top))
        choices = [
            {
                "index": i,
                "text": r.text,
                "logprobs": _completion_logprobs(r)
                if "logprobs" in body and body["logprobs"] is not None
                else None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return web.json_response(envelope("text_completion", choices, results))

    async def chat(request: web.Request) -> web.Response:
        body = await body_of(request)
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
        ):
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # no template: the trainer's own rule for a bare prompt
            text = format_prompt(tok, "\n\n".join(m["content"] for m in messages))
        with_logprobs = bool(body.get("logprobs", False))
        top = _int(body, "top_logprobs", 0) if with_logprobs else 0
        (result,) = await run([list(tok.encode(text, add_special_tokens=False))], _params(body, top))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": _chat_logprobs(result) if with_logprobs else None,
            "finish_reason": result.finish_reason,
        }
        return web.json_response(envelope("chat.completion", [choice], [result]))

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": options.model_name,
                        "object": "model",
                        "owned_by": "rlaif-operator",
                        "max_model_len": engine.max_model_len,
                    }
                ],
            }
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start_batcher(app: web.Application) -> Any:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = web.Application(middlewares=[auth], client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app[BATCHER] = batcher
    app.cleanup_ctx.append(start_batcher)
    return app
