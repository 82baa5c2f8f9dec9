"""argparse ``type=`` callables shared by ``rlaif-train`` and ``rlaif-operator``: a bad value is a
usage error that names the value, not a traceback. In :mod:`rlaif_api` so the operator needs nothing
of the trainer."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: off)."""
    return _int_at_least(text, 0, 65535, "a port number (0 to 65535)")


def count(text: str) -> int:
    """A count, 0 or more."""
    return _int_at_least(text, 0, None, "a count (0 or more)")


__all__ = ["count", "port"]
