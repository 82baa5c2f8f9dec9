"""Policy-side helpers shared by the RL loop, evaluation and the benchmark.

* :func:`eos_ids` — the one stop-token rule: the tokenizer's EOS and the generation config's;
* :func:`generate` — batched sampling with a stop at EOS, returning padded response ids and a mask
  (:func:`sample_tokens`, a plain decode loop that draws what HF's ``generate`` draws, faster);
* :func:`response_logprobs` — per-token log-probabilities (and entropies / hidden states) of the
  sampled responses under ``softmax(logits / temperature)``, the distribution the tokens were drawn
  from (top-p truncation is not reflected in the log-probabilities).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Generation",
    "eos_ids",
    "finish_generation",
    "generate",
    "prompt_lengths",
    "response_logprobs",
    "sample_tokens",
    "tokenize_prompts",
]


def tokenize_prompts(tokenizer, texts: list[str], device, max_prompt_tokens: int | None = None):
    """Left-padded ``(input_ids, attention_mask)`` for already-formatted prompt texts."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=max_prompt_tokens is not None,
            max_length=max_prompt_tokens,
        )
    finally:
        tokenizer.padding_side = old_side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def prompt_lengths(tokenizer, texts: list[str]) -> list[int]:
    """The number of tokens :func:`tokenize_prompts` gives each formatted prompt (without padding),
    so that a caller can refuse a prompt that is too long, naming it, before sampling anything."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def eos_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends a response (the tokenizer's EOS plus the generation config's)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    return sorted(ids)


@dataclass
class Generation:
    """One batch of sampled responses (rows aligned with the prompts given, each repeated k times)."""

    query_ids: torch.Tensor  # [B, P] left-padded
    query_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded
    response_mask: torch.Tensor  # [B, R] float, 1 up to and including the first EOS
    texts: list[str]  # decoded responses (special tokens skipped)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


def _response_mask(response_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= response_ids == s
    # Tokens strictly after the first stop token are padding.
    after = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return (~after).to(torch.float32)


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: ``cache`` in transformers 5.2x, ``past_key_values``
    before (5.2x still takes the old name, with a deprecation warning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as HF's ``TopPLogitsWarper`` does it: drop the least likely tokens whose
    cumulative probability stays within ``1 - top_p``, always keeping the most likely one."""
    sorted_scores, order = torch.sort(scores, descending=False)
    drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def sample_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    do_sample: bool,
    stop_ids: list[int],
    pad_id: int,
    top_k: int = 0,
    on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """``[B, ≤ max_new_tokens]`` new tokens for left-padded prompts; rows that stopped get ``pad_id``.

    A plain decode loop in place of ``model.generate``: one prefill, then one token per step on a
    DynamicCache, the logits of the last position only. It draws the same tokens as HF's sampling
    for the same RNG state (float32 scores, divided by the temperature, top-p as HF filters,
    ``torch.multinomial``, finished rows padded, stop once every row has stopped; tested), without
    ``generate``'s per-step machinery (input preparation, logits-processor and stopping-criteria
    lists, config checks) and, run under ``inference_mode``, without autograd's bookkeeping: about
    15 % less CPU per rollout on the tiny model (gpu-findings, BENCHMARKS.md). The result is cloned
    out of inference mode, since the update feeds it to a forward that records gradients.

    ``on_step(scores, tokens, running)``, when given, sees each step's raw float32 logits (before the
    temperature), the tokens drawn and which rows were still running: ``rlaif-train serve`` reads
    the tokens' log-probabilities from it without a second forward.

    ``generators``, one per row, draws each row's tokens from its own RNG instead of the global
    one, so that a row's sample does not depend on which other rows share its batch: the RL loop
    seeds one per sample, and a step split over data-parallel processes then draws what one
    process draws for the whole batch.
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    with torch.inference_mode():
        batch = input_ids.shape[0]
        cache = DynamicCache()
        cache_arg = _cache_argument(model)
        mask = attention_mask
        # HF's positions for left padding: count real tokens; padding positions are never attended.
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        stop = torch.tensor(stop_ids, device=input_ids.device)
        running = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        step_ids, step_pos = input_ids, positions
        tokens: list[torch.Tensor] = []
        for t in range(max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: cache},
            )
            scores = out.logits[:, -1, :].to(dtype=torch.float32)
            if do_sample:
                if temperature != 1.0:
                    scores = scores / temperature
                if 0 < top_k < scores.shape[-1]:  # HF's TopKLogitsWarper, applied before top-p as there
                    kth = torch.topk(scores, top_k).values[..., -1, None]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                if top_p < 1.0:
                    scores = _top_p_filter(scores, top_p)
                probs = scores.softmax(dim=-1)
                if generators is None:
                    nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
                else:
                    nxt = torch.cat(
                        [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
                    )
            else:
                nxt = scores.argmax(dim=-1)
            nxt = torch.where(running, nxt, torch.full_like(nxt, pad_id))
            if on_step is not None:
                on_step(out.logits[:, -1, :].to(dtype=torch.float32), nxt, running.clone())
            tokens.append(nxt)
            running &= ~torch.isin(nxt, stop)
            if t == max_new_tokens - 1 or not bool(running.any()):
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        result = torch.stack(tokens, dim=1)
    return result.clone()


def finish_generation(
    tokenizer,
    q_ids: torch.Tensor,
    q_mask: torch.Tensor,
    resp: torch.Tensor,
    stop: list[int],
    pad_id: int,
    lengths: list[int] | None = None,
) -> Generation:
    """The :class:`Generation` of sampled ``resp`` (``[B, T]``): the response mask up to and
    including the first stop token (and within ``lengths[i]`` tokens, for rows an engine returned
    shorter than ``T``), columns that are padding in every row trimmed, padding set to ``pad_id``,
    the texts decoded (special tokens skipped)."""
    mask = _response_mask(resp, stop)
    if lengths is not None:
        within = (
            torch.arange(resp.shape[1], device=resp.device)[None, :]
            < torch.tensor(lengths, device=resp.device)[:, None]
        )
        mask = mask * within.to(mask.dtype)
    keep = max(int(mask.sum(dim=1).max().item()), 1)
    resp, mask = resp[:, :keep], mask[:, :keep]
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, pad_id))
    texts = [
        tokenizer.decode(r[: int(n)].tolist(), skip_special_tokens=True).strip()
        for r, n in zip(resp, mask.sum(dim=1), strict=True)
    ]
    return Generation(q_ids, q_mask, resp, mask, texts)


def generate(
    model,
    tokenizer,
    formatted_prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    do_sample: bool = True,
    max_prompt_tokens: int | None = None,
    device=None,
    generators: Sequence[torch.Generator] | None = None,
) -> Generation:
    """Sample one response per formatted prompt (repeat prompts to get several samples);
    ``generators``: one RNG per prompt (see :func:`sample_tokens`)."""
    device = device or next(model.parameters()).device
    q_ids, q_mask = tokenize_prompts(tokenizer, formatted_prompts, device, max_prompt_tokens)
    stop = eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    resp = sample_tokens(
        model,
        q_ids,
        q_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        do_sample=do_sample,
        stop_ids=stop,
        pad_id=pad_id,
        generators=generators,
    )
    return finish_generation(tokenizer, q_ids, q_mask, resp, stop, pad_id)


def response_logprobs(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float,
    with_entropy: bool = False,
    with_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs of ``response_ids`` under ``softmax(logits / T)``; optionally entropy and hidden states.

    Returns ``(logp [B,R], entropy [B,R] or None, hidden [B,R,H] or None)``; ``hidden[:, t]`` is the
    final-layer state *before* emitting response token ``t`` (the state a value head reads).
    """
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attn = torch.cat([query_mask, response_mask.to(query_mask.dtype)], dim=1)
    position_ids = (attn.long().cumsum(dim=1) - 1).clamp(min=0)
    R = response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attn,
        position_ids=position_ids,
        logits_to_keep=R + 1,
        output_hidden_states=with_hidden,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float() / temperature
    logsm = torch.log_softmax(logits, dim=-1)
    logp = torch.gather(logsm, 2, response_ids.unsqueeze(-1)).squeeze(-1) * response_mask
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logsm.exp() * logsm).sum(-1) * response_mask
    hidden = None
    if with_hidden:
        hidden = out.hidden_states[-1][:, -R - 1 : -1, :]
    return logp, entropy, hidden
