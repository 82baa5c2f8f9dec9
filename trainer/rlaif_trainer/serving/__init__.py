"""An OpenAI-compatible endpoint for a local model (``rlaif-train serve``): the labeler server of
CPU tests and small clusters, spoken to by the same client as vLLM."""

from __future__ import annotations

from typing import Any

__all__ = ["serve"]


def serve(
    model: str,
    *,
    host: str,
    port: int,
    served_model_name: str | None = None,
    max_logprobs: int = 20,
    max_model_len: int | None = None,
    max_batch: int = 16,
    api_key: str | None = None,
    device: Any = None,
    dtype: Any = None,
) -> None:
    """Load ``model`` (a path, a hub-style name already on disk, or ``embedded:<name>``) and serve it
    until interrupted."""
    from aiohttp import web

    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.serving.engine import CompletionEngine
    from rlaif_trainer.serving.server import ServeOptions, build_app

    lm, tok = load_causal_lm(model, device=device, dtype=dtype)
    engine = CompletionEngine(lm, tok, max_logprobs=max_logprobs, max_model_len=max_model_len)
    options = ServeOptions(model_name=served_model_name or model, max_batch=max_batch, api_key=api_key)
    web.run_app(build_app(engine, options), host=host, port=port, print=None)
