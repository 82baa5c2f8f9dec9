"""The reward model's pair losses: the paper's soft cross-entropy and Bradley-Terry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def soft_label_loss(r_a: Any, r_b: Any, p_a: Any) -> Any:
    """Per-pair cross-entropy between ``p_a`` and ``softmax([r_a, r_b])``."""
    import torch.nn.functional as F

    d = r_a - r_b
    return p_a * F.softplus(-d) + (1.0 - p_a) * F.softplus(d)


def bradley_terry_loss(r_a: Any, r_b: Any, p_a: Any) -> Any:
    """Per-pair ``−log σ(r_win − r_lose)`` with the winner ``a`` when ``p_a > 0.5``."""
    import torch.nn.functional as F

    sign = (p_a > 0.5).to(r_a.dtype) * 2 - 1
    return F.softplus(-sign * (r_a - r_b))


def pair_loss(kind: str) -> Callable[[Any, Any, Any], Any]:
    if kind == "soft":
        return soft_label_loss
    if kind == "bradleyTerry":
        return bradley_terry_loss
    raise ValueError(f"unknown reward loss {kind!r}")
