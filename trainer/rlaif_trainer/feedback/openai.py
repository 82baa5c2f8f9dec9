"""The ``openai`` provider: any OpenAI-compatible endpoint that returns logprobs.

Works with vLLM, TGI's OpenAI API and OpenAI itself. Each prompt is the plain-text labeler prompt
(:mod:`rlaif_trainer.feedback.prompts`; no chat template here, the server's tokenizer is not known). Two APIs,
chosen by ``labeler.api``; the prompt text, the answer extraction and the retry policy are the same:

``completions`` (default)::

    POST {endpoint}/completions
    {"model": ..., "prompt": ..., "max_tokens": 1, "temperature": 0, "logprobs": 20}

and the answer is read from ``choices[0].logprobs.top_logprobs[0]`` (a ``{token: logprob}`` map).

``chat``, for models served only as chat (OpenAI's current models, vLLM chat models)::

    POST {endpoint}/chat/completions
    {"model": ..., "messages": [{"role": "user", "content": <the same prompt text>}],
     "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 20}

and the answer is read from ``choices[0].logprobs.content[0].top_logprobs`` (a list of
``{"token", "logprob", "bytes"}``). The whole prompt, ending included (``Preferred Response=``), is
the user message: a chat API cannot prefill the assistant turn, so the ending is left as the cue.

In both, leading and trailing spaces in tokens are ignored (" 2" counts as "2"; the best of the
variants is kept) and case is kept ("yes" is not "Yes"). Pairwise: the softmax over the
log-probabilities of "1" and "2"; pointwise: log P("Yes") − log P("No"). A token missing from the
top list is taken to have the smallest log-probability the list shows (a bound; both missing is a
malformed answer). Direct scores: a score token missing from the list counts as probability 0 (none
shown is a malformed answer). Two-step chain-of-thought first asks for a rationale (``max_tokens``
96, temperature 0; read from ``choices[0].text`` or ``choices[0].message.content``).

Reliability: at most ``max_concurrency`` requests in flight; 429, 5xx, timeouts, connection errors
and malformed bodies are retried up to ``max_retries`` times with exponential backoff and jitter
(honouring ``Retry-After``); other 4xx fail at once (:class:`rlaif_trainer.errors.BadInputError` for
400/401/403/404, which a retry cannot fix). The API key comes from an environment variable that the
operator fills from ``labeler.apiKeySecretRef``; it is sent as a bearer token and never logged or
put in an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from rlaif_api.contract import LABELER_TOP_LOGPROBS
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback import prompts as P
from rlaif_trainer.feedback.base import LabelerError, PairwiseLabelerBase, PointwiseLabelerBase

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "ClientOptions",
    "CompletionsClient",
    "OpenAIPairwiseLabeler",
    "OpenAIPointwiseLabeler",
    "read_api_key",
]

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
PERMANENT_STATUS = {400, 401, 403, 404, 422}


def read_api_key(env: str) -> str | None:
    return os.environ.get(env) or os.environ.get("OPENAI_API_KEY") or None


class _Malformed(Exception):
    pass


def _api_url(endpoint: str, api: str) -> str:
    """The API's URL under ``endpoint``, which may already end with either API's path."""
    base = endpoint.rstrip("/")
    for path in _APIS.values():
        if base.endswith(path.path):
            base = base[: -len(path.path)]
            break
    return base + _APIS[api].path


def _normalise_top(top: Any) -> dict[str, float]:
    if isinstance(
        top, list
    ):  # the chat shape, and some completions servers: [{"token": ..., "logprob": ...}]
        try:
            top = {t["token"]: t["logprob"] for t in top}
        except (KeyError, TypeError):
            raise _Malformed("top_logprobs entries lack token/logprob") from None
    if not isinstance(top, dict) or not top:
        raise _Malformed("empty top_logprobs")
    out: dict[str, float] = {}
    for tok, lp in top.items():
        if not isinstance(lp, (int, float)) or isinstance(lp, bool) or math.isnan(lp):
            raise _Malformed(f"logprob of {tok!r} is not a number")
        key = str(tok).strip()
        out[key] = max(out.get(key, -math.inf), float(lp))
    return out


def _completions_top(body: Any) -> dict[str, float]:
    try:
        top = body["choices"][0]["logprobs"]["top_logprobs"][0]
    except (KeyError, IndexError, TypeError) as err:
        raise _Malformed(f"no choices[0].logprobs.top_logprobs[0] ({type(err).__name__})") from None
    return _normalise_top(top)


def _chat_top(body: Any) -> dict[str, float]:
    try:
        top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError) as err:
        raise _Malformed(f"no choices[0].logprobs.content[0].top_logprobs ({type(err).__name__})") from None
    return _normalise_top(top)


def _completions_text(body: Any) -> str:
    try:
        text = body["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        raise _Malformed("no choices[0].text") from None
    if not isinstance(text, str):
        raise _Malformed("choices[0].text is not a string")
    return text


def _chat_text(body: Any) -> str:
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Malformed("no choices[0].message.content") from None
    if not isinstance(text, str):  # null on a refusal or a tool call
        raise _Malformed("choices[0].message.content is not a string")
    return text


def _completions_payload(model: str, prompt: str, max_tokens: int, logprobs: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    if logprobs is not None:
        payload["logprobs"] = logprobs
    return payload


def _chat_payload(model: str, prompt: str, max_tokens: int, logprobs: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if logprobs is not None:
        payload["logprobs"] = True
        payload["top_logprobs"] = logprobs
    return payload


@dataclass(frozen=True)
class _Api:
    """What differs between the two APIs: the path, the request body, and where the answer is."""

    path: str
    payload: Callable[[str, str, int, int | None], dict[str, Any]]
    top_logprobs: Callable[[Any], dict[str, float]]
    text: Callable[[Any], str]


# Longest path first, so that _api_url strips ".../chat/completions" whole.
_APIS: dict[str, _Api] = {
    "chat": _Api("/chat/completions", _chat_payload, _chat_top, _chat_text),
    "completions": _Api("/completions", _completions_payload, _completions_top, _completions_text),
}
#: Most top logprobs OpenAI's chat API returns (vLLM's limit is its --max-logprobs, 20 by default).
TOP_LOGPROBS = LABELER_TOP_LOGPROBS


def two_way(top: dict[str, float], yes: str, no: str) -> tuple[float, float]:
    """Log-probabilities of ``yes`` and ``no``; a missing one is bounded by the smallest shown."""
    if yes not in top and no not in top:
        raise _Malformed(f"neither {yes!r} nor {no!r} among the top logprobs")
    floor = min(top.values())
    return top.get(yes, floor), top.get(no, floor)


class ClientOptions(TypedDict, total=False):
    """How a labeler talks to its endpoint: the keyword arguments of :class:`CompletionsClient`
    after the endpoint and the model, which both OpenAI labelers pass through unchanged."""

    api: str
    api_key: str | None
    max_concurrency: int
    max_retries: int
    timeout_s: float
    backoff_base_s: float
    backoff_max_s: float


class CompletionsClient:
    """Async client with a concurrency limit and retry with backoff; :meth:`run` is synchronous.

    ``api`` (``completions`` or ``chat``) picks the URL, the request body and where the answer is
    read; everything else is shared.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api: str = "completions",
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if api not in _APIS:
            raise ValueError(f"unknown labeler api {api!r}; expected one of {sorted(_APIS)}")
        self.api = api
        self._api = _APIS[api]
        self.url = _api_url(endpoint, api)
        self.model = model
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stats = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:  # never show the key
        return f"CompletionsClient(url={self.url!r}, model={self.model!r}, api={self.api!r})"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        d = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return d * (0.5 + random.random() / 2)

    async def _one(self, session: Any, sem: asyncio.Semaphore, payload: dict[str, Any], parse: Any) -> Any:
        import aiohttp

        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            async with sem:
                self.stats["requests"] += 1
                try:
                    async with session.post(self.url, json=payload, headers=self._headers()) as resp:
                        status = resp.status
                        raw = await resp.read()
                        retry_after = resp.headers.get("Retry-After")
                    if status == 200:
                        try:
                            return parse(json.loads(raw))
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            last = "malformed response: not JSON"
                        except _Malformed as err:
                            last = f"malformed response: {err}"
                    elif status in PERMANENT_STATUS:
                        snippet = raw[:200].decode("utf-8", "replace")
                        raise BadInputError(f"labeler endpoint {self.url} answered HTTP {status}: {snippet}")
                    elif status in RETRY_STATUS or status >= 500:
                        last = f"HTTP {status}"
                    else:
                        raise LabelerError(f"labeler endpoint {self.url} answered HTTP {status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    last = f"{type(err).__name__}: {err}"
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                delay = self._delay(attempt, retry_after)
                log.warning(
                    "labeler endpoint %s: %s; retry %d/%d in %.2fs",
                    self.url,
                    last,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
        raise LabelerError(
            f"labeler endpoint {self.url} failed after {self.max_retries + 1} attempts: {last}"
        )

    async def _all(self, payloads: Sequence[dict[str, Any]], parse: Any) -> list[Any]:
        import aiohttp

        sem = asyncio.Semaphore(self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            return list(await asyncio.gather(*(self._one(session, sem, p, parse) for p in payloads)))

    def top_logprobs(self, prompts: Sequence[str], parse: Callable[[dict[str, float]], T]) -> list[T]:
        """One token per prompt; ``parse`` gets its top log-probabilities (``{token: logprob}``)."""
        return self.run(prompts, lambda body: parse(self._api.top_logprobs(body)))

    def generate(self, prompts: Sequence[str], *, max_tokens: int) -> list[str]:
        """Greedy text, up to ``max_tokens`` per prompt."""
        return self.run(prompts, self._api.text, max_tokens=max_tokens, logprobs=None)

    def run(
        self,
        prompts: Sequence[str],
        parse: Callable[[Any], T],
        *,
        max_tokens: int = 1,
        logprobs: int | None = TOP_LOGPROBS,
    ) -> list[T]:
        """``parse`` gets each JSON response body and raises :class:`_Malformed` to have it retried."""
        payloads = [self._api.payload(self.model, p, max_tokens, logprobs) for p in prompts]
        if not payloads:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._all(payloads, parse))
        # Called from inside an event loop: run in a helper thread with its own loop.
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["v"] = asyncio.run(self._all(payloads, parse))
            except BaseException as err:  # re-raised below
                box["e"] = err

        th = threading.Thread(target=target)
        th.start()
        th.join()
        if "e" in box:
            raise box["e"]
        return box["v"]


class OpenAIPairwiseLabeler(PairwiseLabelerBase):
    """Pairwise preferences (and d-RLAIF scores) from an OpenAI-compatible endpoint's logprobs;
    ``client`` options: :class:`ClientOptions`."""

    def __init__(
        self,
        *,
        endpoint: str,
        model: str,
        preamble: str = "base",
        few_shot: Sequence[Any] = (),
        chain_of_thought: bool = False,
        position_debias: bool = True,
        **client: Unpack[ClientOptions],
    ) -> None:
        super().__init__(position_debias=position_debias)
        self.client = CompletionsClient(endpoint, model, **client)
        self.head = P.pairwise_head(preamble, few_shot, chain_of_thought=chain_of_thought)
        self.preamble = preamble
        self.chain_of_thought = chain_of_thought

    def first_preferred(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[str | None]]:
        rats: list[str | None] = [None] * len(prompts)
        if self.chain_of_thought:
            texts = [
                self.head + P.cot_body(p, a, b) + P.COT_ENDING
                for p, a, b in zip(prompts, first, second, strict=True)
            ]
            rats = [t.strip() for t in self.client.generate(texts, max_tokens=96)]

        def parse(top: dict[str, float]) -> float:
            l1, l2 = two_way(top, "1", "2")
            m = max(l1, l2)
            return math.exp(l1 - m) / (math.exp(l1 - m) + math.exp(l2 - m))

        texts = [
            self.head
            + (
                P.pairwise_body(p, a, b) + P.PAIRWISE_ENDING
                if r is None
                else P.cot_body(p, a, b) + P.cot_ending(r)
            )
            for p, a, b, r in zip(prompts, first, second, rats, strict=True)
        ]
        return self.client.top_logprobs(texts, parse), rats

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """d-RLAIF over an endpoint: scores 1-9 (single tokens in common tokenizers), normalised to [-1, 1]."""
        from rlaif_trainer.feedback.scoring import expected_score, normalize_score

        scale = 9
        head = P.score_head(self.preamble, scale=scale)

        def parse(top: dict[str, float]) -> float:
            probs = [math.exp(top[str(i)]) if str(i) in top else 0.0 for i in range(1, scale + 1)]
            if sum(probs) <= 0:
                raise _Malformed("no score token among the top logprobs")
            return normalize_score(expected_score(probs), scale)

        texts = [
            head + P.score_body(p, r) + P.score_ending(scale) for p, r in zip(prompts, responses, strict=True)
        ]
        return self.client.top_logprobs(texts, parse)


class OpenAIPointwiseLabeler(PointwiseLabelerBase):
    """Per-principle Yes/No log-odds from an OpenAI-compatible endpoint's logprobs; ``client``
    options: :class:`ClientOptions`."""

    def __init__(
        self,
        *,
        endpoint: str,
        model: str,
        principles: Sequence[str],
        preamble: str | None = None,
        **client: Unpack[ClientOptions],
    ) -> None:
        super().__init__(principles)
        self.client = CompletionsClient(endpoint, model, **client)
        self.head = P.pointwise_head(preamble)

    def logodds(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        def parse(top: dict[str, float]) -> float:
            ly, ln = two_way(top, "Yes", "No")
            return ly - ln

        texts = [
            self.head + P.pointwise_body(p, r, q) + "Answer="
            for p, r in zip(prompts, responses, strict=True)
            for q in self.principles
        ]
        flat = self.client.top_logprobs(texts, parse)
        k = len(self.principles)
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
