"""One warning when the API server goes away and one line when it is back.

kopf retries every failed request of its watch streams and writes an ERROR for each retry
("Request attempt #3 failed; will retry: GET ...watch=true... -> ClientConnectorError"): one per
watched resource every few seconds, for as long as the API server is down, although nothing is
wrong with the operator and nothing needs doing. :class:`OutageLogFilter` sits on kopf's API client
logger and turns that storm into two lines: the first failed retry becomes one WARNING, later ones
are dropped, and the first request that succeeds after retries (a DEBUG record kopf writes anyway)
becomes one INFO line saying how long the server was away. A request that exhausts its retries
("escalating") is still an ERROR.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

# kopf's request retries are logged by the caller's logger: the watch streams' and the API client's.
KOPF_API_LOGGER = "kopf._cogs.clients.api"
KOPF_LOGGERS = (KOPF_API_LOGGER, "kopf._cogs.clients.watching")
_RETRYING = re.compile(r"^Request attempt #\d+(?:/\d+)? failed; (?:will retry|TCP closed|SSL closed)")
_SUCCEEDED = re.compile(r"^Request attempt #\d+(?:/\d+)? succeeded")


class OutageLogFilter(logging.Filter):
    def __init__(self, clock: Callable[[], float] = time.monotonic, keep_debug: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.keep_debug = keep_debug  # --log-level debug: kopf's own request lines pass through
        self.away_since: float | None = None
        self.retries = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        with self._lock:
            if _RETRYING.match(message):
                self.retries += 1
                if self.away_since is not None:
                    return False
                self.away_since = self.clock()
                cause = message.split(" -> ", 1)[1] if " -> " in message else "connection lost"
                _rewrite(
                    record,
                    logging.WARNING,
                    f"the API server is unreachable ({cause}); kopf retries its requests quietly, "
                    "and one line follows when the server is back",
                )
                return True
            if _SUCCEEDED.match(message) and self.away_since is not None:
                away, retries = self.clock() - self.away_since, self.retries
                self.away_since, self.retries = None, 0
                _rewrite(
                    record,
                    logging.INFO,
                    f"the API server is reachable again after {away:.0f}s ({retries} requests retried)",
                )
                return True
        return record.levelno >= logging.INFO or self.keep_debug


def _rewrite(record: logging.LogRecord, level: int, message: str) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.msg, record.args = message, ()


def install(level: int) -> OutageLogFilter:
    """Attach one filter (one outage state) to kopf's client loggers. They are opened to DEBUG so
    that the "succeeded after retries" record reaches the filter; the filter drops DEBUG records
    unless the operator itself logs at DEBUG."""
    outage = OutageLogFilter(keep_debug=level <= logging.DEBUG)
    for name in KOPF_LOGGERS:
        logger = logging.getLogger(name)
        logger.addFilter(outage)
        logger.setLevel(logging.DEBUG)
    return outage
