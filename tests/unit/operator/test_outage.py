"""The outage log filter on kopf's API client logger: a real logger and handler, a fake clock."""

from __future__ import annotations

import logging

from rlaif_operator.outage import KOPF_API_LOGGER, OutageLogFilter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_an_outage_is_one_warning_and_one_line_when_the_server_is_back(caplog) -> None:
    clock = Clock()
    logger = logging.getLogger(KOPF_API_LOGGER + ".test")
    logger.setLevel(logging.DEBUG)
    outage = OutageLogFilter(clock=clock)
    logger.addFilter(outage)
    try:
        with caplog.at_level(logging.DEBUG, logger=logger.name):
            logger.debug("Request attempt #2: GET https://x/api/v1/pods?watch=true")  # dropped: DEBUG
            for i in range(1, 9):  # four watch streams, two retries each
                logger.error(
                    f"Request attempt #{i % 3 + 1} failed; will retry: GET https://x/{i} -> ClientConnectorError()"
                )
            clock.t += 42
            logger.debug("Request attempt #3 succeeded: GET https://x/api/v1/pods?watch=true")
            logger.debug("Request attempt #2 succeeded: GET https://x/apis/batch/v1/jobs")  # no longer away
            logger.error("Request attempt #5 failed; escalating: GET https://x -> ClientConnectorError()")
        lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger.name]
        assert lines[0][0] == "WARNING" and "unreachable (ClientConnectorError())" in lines[0][1]
        assert lines[1] == ("INFO", "the API server is reachable again after 42s (8 requests retried)")
        assert lines[2][0] == "ERROR" and "escalating" in lines[2][1]  # a request that gave up stays an error
        assert len(lines) == 3
    finally:
        logger.removeFilter(outage)
