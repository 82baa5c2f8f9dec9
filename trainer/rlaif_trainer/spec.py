"""Transitional: the API moved to :mod:`rlaif_api`; this re-export goes once the operator imports it."""

from rlaif_api import *  # noqa: F403
from rlaif_api import __all__  # noqa: F401
