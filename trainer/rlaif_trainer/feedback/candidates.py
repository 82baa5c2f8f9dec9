"""Candidate generation: two sampled responses per prompt from the initial policy (paper §2.1).

Output: ``<artifacts.candidates>/candidates.jsonl``, one pair per line::

    {"id": "p0000003-1a2b3c4d5e",          # stable pair id (the prompt's "id", else index + hash)
     "prompt": "...",                       # the prompt text
     "response_a": "...", "response_b": "...",  # two independent samples
     "source": "/data/prompts.jsonl:4",     # where the prompt came from
     "seed": 1234}                          # the seed of the batch that produced it

Sampled by the generation RL and evaluation use (:func:`rlaif_trainer.modeling.generation.generate`:
the one chat template, the one stop-token rule, the configured temperature and top-p, no top-k), so
the pairs come from the very policy RL starts from. Each prompt appears twice in its batch, in a row
(``response_a`` then ``response_b``). Prompts are cut into fixed batches in file order, and each
batch is seeded with ``hash(seed, batch index)``, so the output does not depend on where an
interrupted run stopped. A restarted run re-opens the JSONL, drops a torn last line, and skips
batches already written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rlaif_trainer.data.records import JsonlAppender
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.chat import format_prompts
from rlaif_trainer.modeling.generation import generate, prompt_lengths

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

    formatted = format_prompts(tokenizer, [rec["prompt"] for rec in prompts])
    if max_prompt_length is not None:
        for rec, n in zip(prompts, prompt_lengths(tokenizer, formatted), strict=True):
            if n > max_prompt_length:
                raise BadInputError(
                    f"{rec.get('source', rec['id'])}: the prompt is {n} tokens, longer than "
                    f"policy.maxPromptLength={max_prompt_length}"
                )
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
                s = batch_seed(seed, b)
                torch.manual_seed(s)
                texts = generate(
                    model,
                    tokenizer,
                    [text for text in formatted[start : start + batch_size] for _ in range(2)],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                ).texts
                new = []
                for r, rec in enumerate(recs):
                    if rec["id"] in out:
                        continue
                    new.append(
                        {
                            "id": rec["id"],
                            "prompt": rec["prompt"],
                            "response_a": texts[2 * r],
                            "response_b": texts[2 * r + 1],
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
