"""``rlaif-train compare-labels``: how far two labelings of the same pairs agree."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer.data.artifacts import LABELS_FILE, partial_dir
from rlaif_trainer.data.records import (
    claim_id,
    probability_field,
    read_jsonl,
)
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.labeling import summarize

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
