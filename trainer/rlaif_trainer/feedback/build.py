""":func:`build_labeler`: the labeler a :class:`rlaif_api.LabelerSpec` describes (hf, openai or python)."""

from __future__ import annotations

from typing import Any

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.base import API_KEY_ENV, Labeler


def build_labeler(
    spec: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    api_key_env: str = API_KEY_ENV,
    device: Any = None,
) -> Labeler:
    """Build the labeler a :class:`rlaif_api.LabelerSpec` describes.

    For ``hf``, pass ``model``/``tokenizer`` to reuse an already-loaded model (e.g. when the
    labeler is the same checkpoint as the policy); otherwise ``spec.model`` is loaded.
    For ``openai`` the API key is read from ``$<api_key_env>`` (falling back to ``$OPENAI_API_KEY``).
    """
    provider = getattr(spec, "provider", "hf")
    if provider == "hf":
        from rlaif_trainer.feedback.hf import HFPairwiseLabeler, HFPointwiseLabeler

        if model is None or tokenizer is None:
            from rlaif_trainer.modeling.loading import load_causal_lm

            if not spec.model:
                raise ValueError(
                    "labeler.model is not set (the spec resolution fills it with the policy model)"
                )
            model, tokenizer = load_causal_lm(spec.model, device=device)
            model.eval()
        if spec.mode == "pointwise":
            return HFPointwiseLabeler(
                model,
                tokenizer,
                principles=spec.principles,
                preamble=spec.preamble,
                batch_size=spec.batch_size,
                information_weight=spec.information_weight,
            )
        return HFPairwiseLabeler(
            model,
            tokenizer,
            preamble=spec.preamble,
            few_shot=spec.few_shot,
            chain_of_thought=spec.chain_of_thought,
            position_debias=spec.position_debias,
            batch_size=spec.batch_size,
        )
    if provider == "openai":
        if spec.endpoint is None:  # labeler.server: the operator fills the endpoint in a cluster
            raise BadInputError(
                "labeler.server is run by the operator in a cluster; outside one, start the server yourself "
                "(`rlaif-train serve <model> --port 8000`) and set labeler.endpoint to http://localhost:8000/v1"
            )
        from rlaif_trainer.feedback.openai import (
            ClientOptions,
            OpenAIPairwiseLabeler,
            OpenAIPointwiseLabeler,
            read_api_key,
        )

        client = ClientOptions(
            api=spec.api,
            api_key=read_api_key(api_key_env),
            max_concurrency=spec.max_concurrency,
            max_retries=spec.max_retries,
            timeout_s=spec.request_timeout_seconds,
        )
        if spec.mode == "pointwise":
            return OpenAIPointwiseLabeler(
                endpoint=spec.endpoint,
                model=spec.model,
                principles=spec.principles,
                preamble=spec.preamble,
                **client,
            )
        return OpenAIPairwiseLabeler(
            endpoint=spec.endpoint,
            model=spec.model,
            preamble=spec.preamble,
            few_shot=spec.few_shot,
            chain_of_thought=spec.chain_of_thought,
            position_debias=spec.position_debias,
            **client,
        )
    if provider == "python":
        from rlaif_trainer.feedback.python import PythonLabeler

        return PythonLabeler.from_spec(spec.callable, position_debias=spec.position_debias)
    raise ValueError(f"unknown labeler provider {provider!r}")
