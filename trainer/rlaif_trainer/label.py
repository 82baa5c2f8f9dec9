"""The ``label`` stage: candidate pairs (given, or sampled from the policy), then AI preference labels.

Inputs (from the resolved :class:`rlaif_trainer.spec.StageConfig`):

* ``dataset.pairs`` (given pairs, see :func:`rlaif_trainer.data.read_pairs`), or else
  ``dataset.prompts``: the training prompts (the held-out split is excluded exactly as in
  :func:`rlaif_trainer.rl.prompts.split_prompts`), from which :mod:`rlaif_trainer.candidates`
  samples two responses each with ``rl.temperature``, ``rl.top_p`` and ``rl.max_new_tokens``;
* ``labeler``: the labeler (:func:`rlaif_trainer.labelers.build_labeler`). An ``hf`` labeler that
  names the policy's checkpoint reuses the policy model already in memory.

Output: ``<artifacts.labels>/labels.jsonl``, one labelled pair per line, append-only and keyed by
``id`` (a restarted stage skips pairs already labelled)::

    {"id": "p0000003-1a2b3c4d5e", "prompt": "...", "response_a": "...", "response_b": "...",
     "p_a": 0.62,            # soft label: probability that response_a is preferred (debiased)
     "p_a_ab": 0.71,         # P(a preferred) with a shown first
     "p_a_ba": 0.53,         # P(a preferred) with a shown second (absent without positionDebias)
     "consistent": true,     # both orders picked the same response (pointwise: always true)
     "mode": "pairwise", "labeler": "<provider>:<model or callable>",
     "source": "/data/prompts.jsonl:4",
     "rationale_ab": "...", "rationale_ba": "...",        # chain-of-thought only
     "details": {"logodds_a": [...], "logodds_b": [...]}}  # pointwise: per-principle log-odds

The ``reward`` stage reads ``id``, ``prompt``, ``response_a``, ``response_b`` and ``p_a``; a
``dataset.labels`` file given by the user needs only those. ``DONE`` holds the stage summary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.data import (
    JsonlAppender,
    finalize_dir,
    is_done,
    partial_dir,
    read_done,
    read_pairs,
    read_prompts,
)
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.labelers import InputTooLongError, Labeler, PreferenceResult, build_labeler

log = logging.getLogger(__name__)

__all__ = ["label_pairs", "mode_agreement", "run", "summarize", "train_prompt_records"]

LABELS_FILE = "labels.jsonl"
CANDIDATES_FILE = "candidates.jsonl"


def train_prompt_records(spec: Any) -> list[dict[str, Any]]:
    """The training prompts with ids and sources; the same split as ``rl.prompts.split_prompts``."""
    ds = spec.dataset
    recs = read_prompts(ds.prompts, field=ds.prompt_field)
    if not ds.eval_prompts:
        n_eval = max(1, len(recs) // 10) if len(recs) > 1 else 0
        recs = recs[: len(recs) - n_eval]
    if ds.max_prompts is not None:
        recs = recs[: ds.max_prompts]
    return recs


def labeler_name(spec: Any) -> str:
    ref = spec.callable if spec.provider == "python" else spec.model
    return f"{spec.provider}:{ref}"


def _label_chunk(labeler: Labeler, chunk: list[dict[str, Any]]) -> list[PreferenceResult]:
    try:
        return labeler.preference([p["prompt"] for p in chunk], [p["response_a"] for p in chunk],
                                  [p["response_b"] for p in chunk])
    except InputTooLongError as err:
        # Find the offending pair to name its file and line.
        for p in chunk:
            try:
                labeler.preference([p["prompt"]], [p["response_a"]], [p["response_b"]])
            except InputTooLongError as one:
                raise BadInputError(
                    f"{p.get('source') or p['id']}: the labeler prompt for pair {p['id']!r} is {one.n_tokens} tokens, "
                    f"longer than the labeler's context of {one.limit}"
                ) from None
        raise BadInputError(f"a labeler prompt exceeds the labeler's context: {err}") from None


def label_pairs(
    labeler: Labeler,
    pairs: list[dict[str, Any]],
    out_path: str | Path,
    *,
    chunk_size: int = 32,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Label ``pairs`` into the append-only ``out_path``, skipping ids already there.

    Returns all records (in ``pairs`` order) and timing ``{"labelled_now", "seconds"}``.
    """
    from tqdm.auto import tqdm

    extra = extra or {}
    with JsonlAppender(out_path) as out:
        todo = [p for p in pairs if p["id"] not in out]
        bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="label", unit="pair", disable=not progress)
        t0 = time.perf_counter()
        done = len(pairs) - len(todo)
        prom.record_progress(done / max(len(pairs), 1))
        try:
            for s in range(0, len(todo), chunk_size):
                t_chunk = time.perf_counter()
                chunk = todo[s:s + chunk_size]
                results = _label_chunk(labeler, chunk)
                recs = []
                for p, r in zip(chunk, results, strict=True):
                    rec = {k: p[k] for k in ("id", "prompt", "response_a", "response_b")}
                    rec.update(r.to_json())
                    rec["mode"] = getattr(labeler, "mode", "pairwise")
                    rec.update(extra)
                    if p.get("source"):
                        rec["source"] = p["source"]
                    recs.append(rec)
                out.write_many(recs)
                bar.update(len(chunk))
                done += len(chunk)
                prom.record_step(
                    samples=len(chunk), seconds=time.perf_counter() - t_chunk, progress=done / len(pairs)
                )
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        records = [out.records[p["id"]] for p in pairs]
    return records, {"labelled_now": float(len(todo)), "seconds": seconds}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairs, consistency rate, mean confidence and the share of pairs that prefer A."""
    n = len(records)
    cons = [r["consistent"] for r in records if r.get("consistent") is not None]
    return {
        "pairs": n,
        "consistency_rate": round(sum(cons) / len(cons), 4) if cons else None,
        "mean_confidence": round(sum(abs(r["p_a"] - 0.5) * 2 for r in records) / n, 4) if n else None,
        "mean_p_a": round(sum(r["p_a"] for r in records) / n, 4) if n else None,
    }


def mode_agreement(p_a_first: list[float], p_a_second: list[float]) -> float:
    """Share of pairs where two labelings (e.g. pairwise and pointwise) pick the same response."""
    if len(p_a_first) != len(p_a_second) or not p_a_first:
        raise ValueError("need two equally long, non-empty lists")
    return sum((a > 0.5) == (b > 0.5) for a, b in zip(p_a_first, p_a_second, strict=True)) / len(p_a_first)


def run(config: Any, *, progress: bool = True) -> dict[str, Any]:
    """Run the label stage; returns the summary (also stored in ``<labels>/DONE``)."""
    spec = config.spec
    art = config.artifacts
    if is_done(art.labels):
        log.info("labels already complete in %s", art.labels)
        return {**read_done(art.labels), "resumed": True}
    if spec.labeler is None:
        raise BadInputError("the label stage needs spec.labeler")
    lspec = spec.labeler

    policy_model = policy_tok = None
    if spec.dataset.pairs:
        pairs = read_pairs(spec.dataset.pairs)
        cand_summary: dict[str, Any] = {"source": "dataset.pairs"}
    elif is_done(art.candidates):
        pairs = read_pairs(Path(art.candidates) / CANDIDATES_FILE, what="candidates file")
        cand_summary = {"source": "candidates"}
    else:
        from rlaif_trainer.candidates import generate_candidates
        from rlaif_trainer.models import load_causal_lm

        prompts = train_prompt_records(spec)
        policy_model, policy_tok = load_causal_lm(spec.policy.model)
        work = partial_dir(art.candidates)
        t0 = time.perf_counter()
        pairs = generate_candidates(
            policy_model, policy_tok, prompts, work / CANDIDATES_FILE,
            temperature=spec.rl.temperature, top_p=spec.rl.top_p, max_new_tokens=spec.rl.max_new_tokens,
            batch_size=lspec.batch_size, seed=config.seed, max_prompt_length=spec.policy.max_prompt_length,
            progress=progress,
        )
        cand_summary = {"source": "sampled", "prompts": len(prompts), "seconds": round(time.perf_counter() - t0, 2)}
        finalize_dir(work, art.candidates, cand_summary)

    reuse = (
        lspec.provider == "hf" and policy_model is not None and lspec.model in (None, spec.policy.model)
    )
    labeler = build_labeler(lspec, model=policy_model if reuse else None, tokenizer=policy_tok if reuse else None)
    if not reuse:
        policy_model = policy_tok = None  # free the policy if the labeler is another model

    work = partial_dir(art.labels)
    records, timing = label_pairs(
        labeler, pairs, work / LABELS_FILE, chunk_size=max(lspec.batch_size * 4, 16), progress=progress,
        extra={"labeler": labeler_name(lspec)},
    )
    summary: dict[str, Any] = {
        **summarize(records),
        "mode": lspec.mode,
        "provider": lspec.provider,
        "labelled_now": int(timing["labelled_now"]),
        "pairs_per_s": round(timing["labelled_now"] / timing["seconds"], 3) if timing["seconds"] > 0 and timing["labelled_now"] else None,
        "candidates": cand_summary.get("source"),
    }
    finalize_dir(work, art.labels, summary)
    return summary
