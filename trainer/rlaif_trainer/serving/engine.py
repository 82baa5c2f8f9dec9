"""Batched completions with per-token log-probabilities on a local HF causal LM.

The engine under ``rlaif-train serve``: prompts (already token ids) in, for each the sampled tokens,
each token's log-probability and the ``top_logprobs`` most likely tokens at each position. It decodes
with :func:`rlaif_trainer.modeling.generation.sample_tokens` (the trainer's one decode loop) and reads
the log-probabilities from that loop's raw logits, so a one-token label answer costs one forward.

Log-probabilities are those of the model's own distribution (``log_softmax`` of the logits, before
temperature or top-p), as vLLM reports them by default, so a labeler reads the same numbers from a
sampled and from a greedy request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlaif_trainer.modeling.generation import eos_ids, sample_tokens

__all__ = ["Completion", "CompletionEngine", "SamplingParams", "TokenLogprob"]


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for; requests with equal params are batched together."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_logprobs: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    token_id: int


@dataclass
class Completion:
    """One prompt's result: its new tokens and, per position, the chosen and the top tokens."""

    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    chosen: list[TokenLogprob] = field(default_factory=list)
    top: list[list[TokenLogprob]] = field(default_factory=list)
    finish_reason: str = "length"
    text: str = ""


class CompletionEngine:
    """Run :class:`SamplingParams` over a batch of token-id prompts on one model (not thread-safe:
    the server runs it on one worker thread)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_logprobs: int = 20, max_model_len: int | None = None
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_logprobs = max_logprobs
        cfg_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_model_len = int(max_model_len or cfg_len or 2048)
        self.stop_ids = eos_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]
        self.device = next(model.parameters()).device

    def token_text(self, token_id: int) -> str:
        # One token decoded alone, as OpenAI-compatible servers report it (" 2" keeps its space).
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def check(self, prompt_ids: list[int], params: SamplingParams) -> str | None:
        """Why this request cannot run (a 400 for the client), or None."""
        if not prompt_ids:
            return "the prompt is empty"
        if params.max_tokens < 1:
            return f"max_tokens must be at least 1, got {params.max_tokens}"
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            return (
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{len(prompt_ids)} tokens and max_tokens is {params.max_tokens}"
            )
        if not 0 <= params.top_logprobs <= self.max_logprobs:
            return f"logprobs must be between 0 and {self.max_logprobs} (the server's --max-logprobs)"
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            return "temperature must be >= 0 and top_p in (0, 1]"
        return None

    def complete(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One batch of prompts under the same params (left-padded, one decode loop)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        results = [Completion(prompt_tokens=len(p)) for p in prompts]
        k = params.top_logprobs

        def record(scores: torch.Tensor, tokens: torch.Tensor, running: torch.Tensor) -> None:
            logprobs = torch.log_softmax(scores, dim=-1)
            chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
            top_lp, top_id = logprobs.topk(k, dim=-1) if k else (None, None)
            for row in running.nonzero().flatten().tolist():
                tid = int(tokens[row])
                res = results[row]
                res.token_ids.append(tid)
                res.chosen.append(TokenLogprob(self.token_text(tid), float(chosen[row]), tid))
                if top_lp is not None and top_id is not None:
                    res.top.append(
                        [
                            TokenLogprob(self.token_text(int(i)), float(lp), int(i))
                            for lp, i in zip(top_lp[row].tolist(), top_id[row].tolist(), strict=True)
                        ]
                    )
                if tid in self.stop_ids:
                    res.finish_reason = "stop"

        generator_state = None
        if params.seed is not None:  # a seeded request draws the same tokens every time
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(params.seed)
        try:
            sample_tokens(
                self.model,
                ids.to(self.device),
                mask.to(self.device),
                max_new_tokens=params.max_tokens,
                temperature=params.temperature or 1.0,
                top_p=params.top_p,
                do_sample=params.temperature > 0,
                stop_ids=self.stop_ids,
                pad_id=self.pad_id,
                on_step=record,
            )
        finally:
            if generator_state is not None:
                torch.random.set_rng_state(generator_state)
        for res in results:
            res.text = self.tokenizer.decode(res.token_ids, skip_special_tokens=True)
        return results
