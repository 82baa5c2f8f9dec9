"""Training-curve and label-comparison plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_label_comparison", "plot_training_curves"]


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_png: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out_png)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_training_curves(rows: Sequence[dict[str, Any]], out_png: str | Path, *, title: str = "") -> Path:
    """Reward, KL and response length over RL steps (raw and moving average) into ``out_png``."""
    plt = _pyplot()
    steps = [int(r["step"]) for r in rows]
    panels = [
        ("reward", "reward"),
        ("kl", f"KL ({rows[0].get('kl_estimator', 'k1')} estimator)" if rows else "KL"),
        ("response_length", "response length (tokens)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    window = max(1, len(rows) // 10)
    for ax, (key, label) in zip(axes, panels, strict=True):
        vals = [float(r.get(key, float("nan"))) for r in rows]
        if vals:
            ax.plot(
                steps,
                vals,
                color="tab:blue",
                alpha=0.35 if window > 1 else 1.0,
                linewidth=1,
                marker="o" if len(vals) <= 50 else None,
                markersize=3,
                label="per step",
            )
            if window > 1:
                ax.plot(
                    steps, _smooth(vals, window), color="tab:blue", linewidth=2, label=f"mean of {window}"
                )
        ax.set_xlabel("RL step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if window > 1 and rows:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out_png)


def plot_label_comparison(
    p_a_first: Sequence[float],
    p_a_second: Sequence[float],
    out_png: str | Path,
    *,
    first_name: str = "first",
    second_name: str = "second",
    title: str = "",
) -> Path:
    """Scatter of two labelings' ``p_a`` on the same pairs into ``out_png``.

    The quadrants where both prefer the same response are shaded green, the others red, so that
    points off the green show disagreements at a glance; the diagonal marks identical labels.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    for x0, y0, color in (
        (0.5, 0.5, "tab:green"),
        (0, 0, "tab:green"),
        (0.5, 0, "tab:red"),
        (0, 0.5, "tab:red"),
    ):
        ax.add_patch(plt.Rectangle((x0, y0), 0.5, 0.5, color=color, alpha=0.08, linewidth=0))
    ax.axhline(0.5, color="gray", linewidth=0.8)
    ax.axvline(0.5, color="gray", linewidth=0.8)
    ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle="--")
    ax.scatter(
        list(p_a_first),
        list(p_a_second),
        s=14 if len(p_a_first) <= 500 else 4,
        color="tab:blue",
        alpha=0.7 if len(p_a_first) <= 500 else 0.3,
        linewidths=0,
    )
    # In the quadrants' outer corners off the diagonal, where points are rarest: one labeling is
    # undecided there while the other is sure.
    ax.text(0.52, 0.98, "both prefer A", ha="left", va="top", fontsize=8, color="tab:green")
    ax.text(0.48, 0.02, "both prefer B", ha="right", va="bottom", fontsize=8, color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"p_a, {first_name}")
    ax.set_ylabel(f"p_a, {second_name}")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{len(p_a_first)} pairs", fontsize=10)
    return _save(fig, out_png)
