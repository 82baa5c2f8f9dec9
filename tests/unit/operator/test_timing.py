"""The retry backoff curve (rlaif_operator.timing)."""

from __future__ import annotations

import pytest

from rlaif_operator.timing import backoff_delay


@pytest.mark.parametrize(("failures", "expected"), [(0, 0), (1, 10), (2, 20), (3, 40), (7, 600), (30, 600)])
def test_backoff_doubles_and_is_capped(failures: int, expected: float) -> None:
    assert backoff_delay(failures, 10, 600) == expected
