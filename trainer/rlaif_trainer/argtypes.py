"""Transitional: moved to :mod:`rlaif_api.argtypes`; this re-export goes once the operator imports it."""

from rlaif_api.argtypes import count, port

__all__ = ["count", "port"]
