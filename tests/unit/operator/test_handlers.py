"""kopf settings that decide whether the operator survives a bad minute of the API server."""

from __future__ import annotations

import collections.abc
import itertools

import kopf

from rlaif_operator.handlers import EndlessBackoff, configure_kopf


def test_kopf_watchers_never_run_out_of_retries() -> None:
    """A sized backoff list is a retry budget in kopf; once spent, the watcher dies and the
    operator stays live but blind (seen when a Role lagged the operator's start)."""
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    backoffs = settings.networking.error_backoffs
    assert isinstance(backoffs, collections.abc.Iterable)
    assert not isinstance(backoffs, collections.abc.Sized)
    assert list(itertools.islice(backoffs, 1000))[-1] == 30.0


def test_endless_backoff_doubles_to_its_cap_and_restarts_per_request() -> None:
    backoff = EndlessBackoff(first=1, cap=30)
    assert list(itertools.islice(backoff, 8)) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert list(itertools.islice(backoff, 3)) == [1, 2, 4]
