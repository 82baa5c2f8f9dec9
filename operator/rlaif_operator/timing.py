"""Timestamps as the API writes them (RFC 3339, UTC, whole seconds) and the retry backoff curve."""

from __future__ import annotations

from datetime import datetime, timezone


def fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def backoff_delay(failures: int, base_seconds: float, cap_seconds: float) -> float:
    """Delay before the retry that follows the ``failures``-th failure: base, 2*base, 4*base... capped."""
    if failures <= 0:
        return 0.0
    return float(min(base_seconds * (2 ** (failures - 1)), cap_seconds))
