"""Policy-side helpers shared by the RL loop, evaluation and the benchmark.

* :func:`eos_ids` — the one stop-token rule: the tokenizer's EOS and the generation config's;
* :func:`generate` — batched sampling with a stop at EOS, returning padded response ids and a mask;
* :func:`response_logprobs` — per-token log-probabilities (and entropies / hidden states) of the
  sampled responses under ``softmax(logits / temperature)``, the distribution the tokens were drawn
  from (top-p truncation is not reflected in the log-probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Generation", "eos_ids", "generate", "response_logprobs", "tokenize_prompts"]


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


@torch.no_grad()
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
) -> Generation:
    """Sample one response per formatted prompt (repeat prompts to get several samples)."""
    device = device or next(model.parameters()).device
    q_ids, q_mask = tokenize_prompts(tokenizer, formatted_prompts, device, max_prompt_tokens)
    stop = eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "eos_token_id": stop,
        "pad_token_id": pad_id,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    out = model.generate(input_ids=q_ids, attention_mask=q_mask, **kwargs)
    resp = out[:, q_ids.shape[1] :]
    if resp.shape[1] == 0:  # pragma: no cover - max_new_tokens >= 1 in practice
        resp = torch.full((q_ids.shape[0], 1), pad_id, dtype=q_ids.dtype, device=device)
    mask = _response_mask(resp, stop)
    # Trim columns that are padding in every row.
    keep = int(mask.sum(dim=1).max().item())
    keep = max(keep, 1)
    resp, mask = resp[:, :keep], mask[:, :keep]
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, pad_id))
    texts = [
        tokenizer.decode(r[: int(n)].tolist(), skip_special_tokens=True).strip()
        for r, n in zip(resp, mask.sum(dim=1), strict=True)
    ]
    return Generation(q_ids, q_mask, resp, mask, texts)


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
