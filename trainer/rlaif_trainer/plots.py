"""Training-curve plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_training_curves"]


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
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_png)
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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
