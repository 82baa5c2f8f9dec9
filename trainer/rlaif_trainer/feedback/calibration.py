"""Labeler calibration against human preferences: the paper's "AI labeler alignment".

``dataset.calibrationPairs`` (or ``rlaif-train calibrate --pairs``) is a JSONL of pairs whose
``p_a`` is a human's choice (1: response_a is better, 0: response_b is), optionally with a ``flaw``
naming what is wrong with the worse one. :func:`calibrate` labels them with the job's labeler and
reports how often it prefers the human's choice (alignment, with a 95% Wilson interval), how often
the response shown in the same position wins in both orders (position-bias rate, pairwise
labelers: judged in both orders even when the labeler does not debias), and its mean confidence;
by kind of flaw, and for pointwise labelers by principle. The label stage runs it before labelling
and puts the figures in its summary (and so in ``status.results``); ``rlaif-train calibrate`` runs
it alone, to choose principles and a labeler before a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif_trainer.data.records import read_jsonl, read_pairs
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.base import Labeler, PreferenceResult

__all__ = [
    "CALIBRATION_FILE",
    "calibrate",
    "calibration_summary",
    "format_calibration",
    "read_calibration_pairs",
]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


CALIBRATION_FILE = "calibration.jsonl"


def read_calibration_pairs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Pairs with a human preference (``p_a`` required), keeping each line's optional ``flaw``."""
    pairs = read_pairs(path, require_label=True, what="calibration pairs file")
    flaws = [obj.get("flaw") for _, obj in read_jsonl(Path(path), what="calibration pairs file")]
    return [{**p, "flaw": f} if isinstance(f, str) and f else p for p, f in zip(pairs, flaws, strict=True)]


def _orders(labeler: Labeler, pairs: Sequence[dict[str, Any]]) -> list[PreferenceResult]:
    """Labels with both orders judged, so a pairwise labeler's position bias can be measured even
    when it does not debias."""
    prompts = [p["prompt"] for p in pairs]
    a = [p["response_a"] for p in pairs]
    b = [p["response_b"] for p in pairs]
    if getattr(labeler, "mode", "pairwise") == "pointwise" or getattr(labeler, "position_debias", False):
        return labeler.preference(prompts, a, b)
    from rlaif_trainer.feedback.base import combine_orders

    ab = labeler.preference(prompts, a, b)
    ba = labeler.preference(prompts, b, a)
    return [combine_orders(x.p_a, y.p_a) for x, y in zip(ab, ba, strict=True)]


def _hit(p_a: float, human_a: bool) -> float:
    """1 when the label prefers the human's choice, 0 when the other, 0.5 on an exact tie."""
    return 0.5 if p_a == 0.5 else float((p_a > 0.5) == human_a)


def calibrate(
    labeler: Labeler, pairs: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The labeler's agreement with human preferences on ``pairs`` (each with ``p_a`` 1 or 0).

    Returns the report and one record per pair. ``alignment`` is the share of pairs where the label
    prefers the human's choice (an exact tie counts half), with a 95% Wilson interval;
    ``position_bias_rate`` (pairwise) the share where the response shown in the same position wins
    in both orders; ``mean_confidence`` the mean ``|p_a − 0.5|·2``. A pair's optional ``flaw`` field
    (what is wrong with the worse response) breaks alignment down by kind of flaw; pointwise labels
    also report each principle's alignment alone.
    """
    from rlaif_trainer.feedback.winrate import wilson_interval

    if not pairs:
        raise BadInputError("no calibration pairs")
    results = _orders(labeler, pairs)
    mode = getattr(labeler, "mode", "pairwise")
    human = [float(p["p_a"]) > 0.5 for p in pairs]
    hits = [_hit(r.p_a, h) for r, h in zip(results, human, strict=True)]
    n = len(pairs)
    lo, hi = wilson_interval(sum(hits), n)
    report: dict[str, Any] = {
        "pairs": n,
        "mode": mode,
        "alignment": sum(hits) / n,
        "alignment_ci95": [lo, hi],
        "mean_confidence": sum(r.confidence for r in results) / n,
        "position_bias_rate": None,
    }
    if mode != "pointwise":
        orders = [(r.p_a_ab, r.p_a_ba) for r in results if r.p_a_ba is not None]
        if orders:
            # A wins when shown first and B wins when shown first (or the same for second place).
            same_pos = sum(1 for ab, ba in orders if (ab > 0.5) != (ba > 0.5))
            report["position_bias_rate"] = same_pos / len(orders)
    by_flaw: dict[str, list[float]] = {}
    for p, h in zip(pairs, hits, strict=True):
        if p.get("flaw"):
            by_flaw.setdefault(str(p["flaw"]), []).append(h)
    if by_flaw:
        report["alignment_by_flaw"] = {f: sum(v) / len(v) for f, v in sorted(by_flaw.items())}
    # Each log-odds column alone: the principles, and the information term when the labeler has one.
    principles = getattr(labeler, "term_names", None) or getattr(labeler, "principles", None)
    if mode == "pointwise" and principles and all("logodds_a" in r.details for r in results):
        from rlaif_trainer.feedback.base import sigmoid

        report["alignment_by_principle"] = {
            q: sum(
                _hit(sigmoid(r.details["logodds_a"][j] - r.details["logodds_b"][j]), h)
                for r, h in zip(results, human, strict=True)
            )
            / n
            for j, q in enumerate(principles)
        }
    records = [
        {
            "id": p["id"],
            "human_p_a": float(p["p_a"]),
            **r.to_json(),
            "agrees": h,
            **({"flaw": p["flaw"]} if p.get("flaw") else {}),
        }
        for p, r, h in zip(pairs, results, hits, strict=True)
    ]
    return report, records


def calibration_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The label-stage summary keys of a :func:`calibrate` report."""
    return {
        "calibration_pairs": report["pairs"],
        "calibration_alignment": round(report["alignment"], 4),
        "calibration_alignment_ci_low": round(report["alignment_ci95"][0], 4),
        "calibration_position_bias_rate": None
        if report["position_bias_rate"] is None
        else round(report["position_bias_rate"], 4),
        "calibration_mean_confidence": round(report["mean_confidence"], 4),
    }


def format_calibration(report: dict[str, Any]) -> str:
    """:func:`calibrate`'s report as plain text for a terminal."""
    lo, hi = report["alignment_ci95"]
    pb = report["position_bias_rate"]
    out = [
        f"calibration pairs   {report['pairs']} ({report['mode']})",
        f"alignment           {report['alignment']:.3f} (95% CI {lo:.3f}-{hi:.3f}) with the human preference",
        "position-bias rate  "
        + (
            "none by construction (pointwise: each response is judged alone)"
            if pb is None
            else f"{pb:.3f} (same position wins in both orders)"
        ),
        f"mean confidence     {report['mean_confidence']:.3f}",
    ]
    for title, key in (("by flaw", "alignment_by_flaw"), ("by principle (alone)", "alignment_by_principle")):
        if report.get(key):
            out += ["", title + ":"]
            out += _table([(f"  {name}", f"{v:.3f}") for name, v in report[key].items()])
    return "\n".join(out)
