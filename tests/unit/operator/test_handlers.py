"""kopf settings that decide whether the operator survives a bad minute of the API server."""

from __future__ import annotations

import collections.abc
import itertools
from typing import Any

import kopf

from rlaif_operator.handlers import EndlessBackoff, NoDiffBaseStorage, configure_kopf


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


def test_no_kopf_handler_needs_a_diff_base() -> None:
    """NoDiffBaseStorage is only sound while nothing reads the diff: on.create/update/delete/field
    handlers, daemons and timers."""
    import rlaif_operator.handlers  # noqa: F401 (registers the handlers)

    registry = kopf.get_default_registry()

    def ours(handlers: Any) -> list[Any]:  # other tests may register handlers of their own here
        return [h for h in handlers if h.fn.__module__.startswith("rlaif_operator")]

    assert ours(registry._indexing.get_all_handlers())  # the handlers are registered at all
    assert not ours(registry._changing.get_all_handlers())
    assert not ours(registry._spawning.get_all_handlers())
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBaseStorage)
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"a": 1}})
    assert settings.persistence.diffbase_storage.build(body=body) == {}
    assert settings.persistence.diffbase_storage.fetch(body=body) is None
