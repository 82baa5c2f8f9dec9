"""Candidate generation: two sampled responses per prompt from the initial policy (paper §2.1).

Output: ``<artifacts.candidates>/candidates.jsonl``, one pair per line::

    {"id": "p0000003-1a2b3c4d5e",          # stable pair id (the prompt's "id", else index + hash)
     "prompt": "...",                       # the prompt text
     "response_a": "...", "response_b": "...",  # two independent samples
     "source": "/data/prompts.jsonl:4",     # where the prompt came from
     "seed": 1234}                          # the seed of the batch that produced it

Batched (left padding, ``num_return_sequences=2``), sampled at the configured temperature and
top-p, without top-k (as in RL). Prompts are cut into fixed batches in file order, and each batch is seeded with
``hash(seed, batch index)``, so the output does not depend on where an interrupted run stopped. A
restarted run re-opens the JSONL, drops a torn last line, and skips batches already written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rlaif_trainer.data.records import JsonlAppender
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.chat import chat_prompt_ids
from rlaif_trainer.modeling.generation import eos_ids

__all__ = ["batch_seed", "generate_candidates"]


def batch_seed(seed: int, batch_index: int) -> int:
    h = hashlib.sha256(f"{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def generate_candidates(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    out_path: Any,
    *,
    temperature: float = 0.9,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    max_prompt_length: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample two responses per prompt (``prompts``: ``[{"id", "prompt", "source"}]``) into ``out_path``."""
    import torch
    from tqdm.auto import tqdm

    encoded = []
    for rec in prompts:
        ids = chat_prompt_ids(tokenizer, rec["prompt"])
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            raise BadInputError(
                f"{rec.get('source', rec['id'])}: the prompt is {len(ids)} tokens, longer than "
                f"policy.maxPromptLength={max_prompt_length}"
            )
        encoded.append(ids)
    dev = next(model.parameters()).device
    stop = eos_ids(tokenizer, model)  # the stop rule RL and evaluation sample with
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    with JsonlAppender(out_path) as out:
        bar = tqdm(
            total=len(prompts),
            desc="candidates",
            unit="prompt",
            disable=not progress,
            initial=sum(1 for r in prompts if r["id"] in out),
        )
        try:
            for b, start in enumerate(range(0, len(prompts), batch_size)):
                recs = prompts[start : start + batch_size]
                if all(r["id"] in out for r in recs):
                    continue
                batch_ids = encoded[start : start + batch_size]
                L = max(len(x) for x in batch_ids)
                input_ids = torch.full((len(batch_ids), L), pad, dtype=torch.long)
                mask = torch.zeros((len(batch_ids), L), dtype=torch.long)
                for r, x in enumerate(batch_ids):
                    input_ids[r, L - len(x) :] = torch.tensor(x)
                    mask[r, L - len(x) :] = 1
                s = batch_seed(seed, b)
                torch.manual_seed(s)
                with torch.no_grad():
                    gen = model.generate(
                        input_ids=input_ids.to(dev),
                        attention_mask=mask.to(dev),
                        do_sample=True,
                        temperature=temperature,
                        top_p=top_p,
                        # transformers samples with top-k 50 unless told otherwise; RL and the
                        # evaluation sample without it, and the pairs must come from that policy.
                        top_k=0,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=2,
                        pad_token_id=pad,
                        eos_token_id=stop,
                    )
                texts = tokenizer.batch_decode(gen[:, L:], skip_special_tokens=True)
                new = []
                for r, rec in enumerate(recs):
                    if rec["id"] in out:
                        continue
                    new.append(
                        {
                            "id": rec["id"],
                            "prompt": rec["prompt"],
                            "response_a": texts[2 * r].strip(),
                            "response_b": texts[2 * r + 1].strip(),
                            "source": rec.get("source"),
                            "seed": s,
                        }
                    )
                out.write_many(new)
                bar.update(len(new))
        finally:
            bar.close()
            if was_training:
                model.train()
        by_id = out.records
    return [by_id[r["id"]] for r in prompts]
