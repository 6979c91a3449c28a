"""The invariant every fault test ends with."""

from __future__ import annotations

from tests.service.workers import count_rows


def assert_every_request_ended_once() -> None:
    """Every accepted request is terminal, each succeeded one has exactly one result, and
    no result belongs to anything else."""
    assert count_rows("SELECT count(*) FROM requests WHERE state IN ('queued', 'running')") == 0
    assert count_rows("SELECT count(*) FROM results") == count_rows(
        "SELECT count(*) FROM requests WHERE state = 'succeeded'")
    assert count_rows("SELECT count(*) FROM results r LEFT JOIN requests q ON "
                      "q.id = r.request_id WHERE q.state IS NULL OR q.state <> 'succeeded'") == 0
    assert count_rows("SELECT count(*) FROM (SELECT request_id FROM results GROUP BY "
                      "request_id HAVING count(*) > 1) d") == 0
