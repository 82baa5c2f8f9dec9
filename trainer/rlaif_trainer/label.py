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
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.data import (
    JsonlAppender,
    claim_id,
    finalize_dir,
    is_done,
    partial_dir,
    probability_field,
    read_done,
    read_jsonl,
    read_pairs,
    read_prompts,
)
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.labelers import InputTooLongError, Labeler, PreferenceResult, build_labeler

log = logging.getLogger(__name__)

__all__ = [
    "compare_labelings",
    "format_comparison",
    "join_labelings",
    "label_pairs",
    "mode_agreement",
    "read_labels",
    "run",
    "summarize",
    "train_prompt_records",
]

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
        return labeler.preference(
            [p["prompt"] for p in chunk], [p["response_a"] for p in chunk], [p["response_b"] for p in chunk]
        )
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
        done = len(pairs) - len(todo)
        bar = tqdm(total=len(pairs), initial=done, desc="label", unit="pair", disable=not progress)
        t0 = time.perf_counter()
        prom.record_progress(done / max(len(pairs), 1))
        try:
            for s in range(0, len(todo), chunk_size):
                t_chunk = time.perf_counter()
                chunk = todo[s : s + chunk_size]
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


# --------------------------------------------------------------------------------------------------
# comparing two labelings of the same pairs (``rlaif-train compare-labels``)
# --------------------------------------------------------------------------------------------------

#: Fields that must match for two records with the same id to be the same pair.
_PAIR_FIELDS = ("prompt", "response_a", "response_b")


def read_labels(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Labelled pairs from a labels JSONL, or from a label stage's directory (its ``labels.jsonl``).

    Only ``id`` and ``p_a`` (a number in [0, 1]) are required; ids must be unique. Raises
    :class:`BadInputError` naming the file and line.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / LABELS_FILE).is_file():
            unfinished = partial_dir(p)
            hint = (
                f" (the label stage has not finished: {unfinished} holds its progress)"
                if unfinished.is_dir()
                else ""
            )
            raise BadInputError(f"labels directory {p} holds no {LABELS_FILE}{hint}")
        p = p / LABELS_FILE
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(p, what="labels file"):
        if obj.get("id") is None:
            raise BadInputError(f"{p}:{line}: missing field 'id'")
        rid = claim_id(str(obj["id"]), seen, p, line)
        out.append({**obj, "id": rid, "p_a": probability_field(obj, "p_a", p, line)})
    if not out:
        raise BadInputError(f"labels file {p} holds no labels")
    return out


def join_labelings(
    first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The ``(first, second)`` records of every pair id in both, in ``first``'s order.

    Raises :class:`BadInputError` if no id is shared, or if a shared id names a different pair.
    """
    by_id = {str(r["id"]): r for r in second}
    joined = [(r, by_id[str(r["id"])]) for r in first if str(r["id"]) in by_id]
    if not joined:
        raise BadInputError(
            f"the two labelings share no pair id ({len(first)} and {len(second)} pairs): "
            "label the same pairs in both, e.g. with the same dataset.pairs"
        )
    for a, b in joined:
        # Stages that sample their own candidates name pairs by prompt, so two jobs can give the same
        # id to different responses; comparing those labels would measure nothing.
        differ = [k for k in _PAIR_FIELDS if k in a and k in b and a[k] != b[k]]
        if differ:
            raise BadInputError(
                f"pair {a['id']!r} has a different {' and '.join(differ)} in the two labelings: they labelled "
                "different pairs (did each job sample its own candidates?); give both the same dataset.pairs"
            )
    return joined


def _preference(p_a: float) -> str:
    # Exactly 0.5 is no preference, as in labelers.combine_orders: neither response is picked.
    return "A" if p_a > 0.5 else "B" if p_a < 0.5 else "-"


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    # Tested for constancy directly: a constant column's float variance need not come out exactly 0.
    if len(x) < 2 or min(x) == max(x) or min(y) == max(y):
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing their average rank (as Spearman's rho needs)."""
    order = sorted(range(len(x)), key=x.__getitem__)
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _one_value(records: Sequence[dict[str, Any]], key: str) -> str | None:
    values = sorted({str(r[key]) for r in records if r.get(key) is not None})
    return values[0] if len(values) == 1 else ", ".join(values) if values else None


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def compare_labelings(
    first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]], *, top: int = 5
) -> dict[str, Any]:
    """How far two labelings of the same pairs (e.g. pairwise and pointwise mode) agree.

    Pairs are matched by ``id`` (see :func:`join_labelings`). A ``p_a`` of exactly 0.5 is *no
    preference*: such pairs are counted under ``no_preference`` and left out of ``agreement``, which
    is the share of the pairs where both labelings prefer a response that prefer the same one (None
    if there are none). Pearson and Spearman correlations of ``p_a`` are over all common pairs (None
    when either side is constant or fewer than 2 pairs are shared). Each side's :func:`summarize`
    is over the common pairs too, so the two are comparable; ``pairs`` is the side's own count.
    ``largest_differences`` lists the ``top`` common pairs with the largest ``|p_a first - p_a second|``.
    """
    joined = join_labelings(first, second)
    pa1 = [a["p_a"] for a, _ in joined]
    pa2 = [b["p_a"] for _, b in joined]
    prefs = [(_preference(x), _preference(y)) for x, y in zip(pa1, pa2, strict=True)]
    decided = [(x, y) for x, y in prefs if x != "-" and y != "-"]
    agree = sum(x == y for x, y in decided)
    # Rounded so that float noise (0.6 - 0.3 > 0.7 - 0.4) does not order equal differences; ids do.
    ranked = sorted(joined, key=lambda ab: (-round(abs(ab[0]["p_a"] - ab[1]["p_a"]), 12), str(ab[0]["id"])))

    def side(records: Sequence[dict[str, Any]], common: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pairs": len(records),
            "mode": _one_value(records, "mode"),
            "labeler": _one_value(records, "labeler"),
            **{k: v for k, v in summarize(common).items() if k != "pairs"},
        }

    return {
        "first": side(first, [a for a, _ in joined]),
        "second": side(second, [b for _, b in joined]),
        "common": len(joined),
        "agree": agree,
        "disagree": len(decided) - agree,
        "agreement": _round(agree / len(decided)) if decided else None,
        "no_preference": {
            "first": sum(x == "-" for x, _ in prefs),
            "second": sum(y == "-" for _, y in prefs),
            "either": len(prefs) - len(decided),
        },
        "pearson": _round(_pearson(pa1, pa2)),
        "spearman": _round(_pearson(_ranks(pa1), _ranks(pa2))),
        "largest_differences": [
            {
                "id": a["id"],
                "p_a_first": _round(a["p_a"]),
                "p_a_second": _round(b["p_a"]),
                "difference": _round(abs(a["p_a"] - b["p_a"])),
                "prefers": f"{_preference(a['p_a'])}/{_preference(b['p_a'])}",
            }
            for a, b in ranked[: max(top, 0)]
        ],
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_comparison(report: dict[str, Any]) -> str:
    """:func:`compare_labelings`' report as a plain-text table for a terminal."""

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    first, second = report["first"], report["second"]
    n = report["common"]
    out = [f"first:  {first['path']}", f"second: {second['path']}", ""] if "path" in first else []
    out += _table(
        [
            ("", "first", "second"),
            ("mode", num(first["mode"]), num(second["mode"])),
            ("labeler", num(first["labeler"]), num(second["labeler"])),
            ("pairs", num(first["pairs"]), num(second["pairs"])),
            ("consistency rate", num(first["consistency_rate"]), num(second["consistency_rate"])),
            ("mean confidence", num(first["mean_confidence"]), num(second["mean_confidence"])),
            ("mean p_a", num(first["mean_p_a"]), num(second["mean_p_a"])),
        ]
    )
    nop = report["no_preference"]
    decided = report["agree"] + report["disagree"]
    out += [
        "",
        f"pairs in common   {n} ({first['pairs'] - n} only in first, {second['pairs'] - n} only in second); "
        "the rates above are over these",
        f"agreement         {num(report['agreement'])} (same preferred response on {report['agree']} of the "
        f"{decided} pairs where both prefer one)",
        f"no preference     {nop['either']} of {n} pairs have p_a exactly 0.5 ({nop['first']} in first, "
        f"{nop['second']} in second)",
        f"correlation p_a   Pearson {num(report['pearson'])}, Spearman {num(report['spearman'])}",
    ]
    if report["largest_differences"]:
        out += ["", "largest differences in p_a:"]
        out += _table(
            [
                ("id", "first", "second", "|diff|", "prefers"),
                *(
                    (
                        str(d["id"]),
                        num(d["p_a_first"]),
                        num(d["p_a_second"]),
                        num(d["difference"]),
                        d["prefers"],
                    )
                    for d in report["largest_differences"]
                ),
            ]
        )
    return "\n".join(out)


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
            policy_model,
            policy_tok,
            prompts,
            work / CANDIDATES_FILE,
            temperature=spec.rl.temperature,
            top_p=spec.rl.top_p,
            max_new_tokens=spec.rl.max_new_tokens,
            batch_size=lspec.batch_size,
            seed=config.seed,
            max_prompt_length=spec.policy.max_prompt_length,
            progress=progress,
        )
        cand_summary = {
            "source": "sampled",
            "prompts": len(prompts),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        finalize_dir(work, art.candidates, cand_summary)

    reuse = lspec.provider == "hf" and policy_model is not None and lspec.model in (None, spec.policy.model)
    labeler = build_labeler(
        lspec, model=policy_model if reuse else None, tokenizer=policy_tok if reuse else None
    )
    if not reuse:
        policy_model = policy_tok = None  # free the policy if the labeler is another model

    work = partial_dir(art.labels)
    records, timing = label_pairs(
        labeler,
        pairs,
        work / LABELS_FILE,
        chunk_size=max(lspec.batch_size * 4, 16),
        progress=progress,
        extra={"labeler": labeler_name(lspec)},
    )
    summary: dict[str, Any] = {
        **summarize(records),
        "mode": lspec.mode,
        "provider": lspec.provider,
        "labelled_now": int(timing["labelled_now"]),
        "pairs_per_s": round(timing["labelled_now"] / timing["seconds"], 3)
        if timing["seconds"] > 0 and timing["labelled_now"]
        else None,
        "candidates": cand_summary.get("source"),
    }
    finalize_dir(work, art.labels, summary)
    return summary
