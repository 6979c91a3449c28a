"""The database layer on SQLite and PostgreSQL: schema, claims, idempotent results."""

from __future__ import annotations

from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from llmq.db import queries, workers
from llmq.db.migrate import upgrade
from llmq.db.models import Base, Request, Result, utcnow
from llmq.db.session import get_engine, session_scope


def _batch(n: int = 3, failed_line: bool = False) -> tuple[str, list[int]]:
    reqs = [queries.NewRequest(f"c{i}", "completion", {"prompt": f"p{i}"}, {"max_tokens": 4},
                               line=i + 1) for i in range(n)]
    if failed_line:
        reqs.append(queries.NewRequest("bad", "invalid", {}, {}, line=n + 1,
                                       error="line 4: invalid JSON"))
    with session_scope() as s:
        return queries.create_batch(s, requests=reqs, model="m")


RESULT = {"text": "t", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": 4,
          "worker_host": "h", "worker_pid": 1, "device": "cpu", "model": "m",
          "engine_batch_size": 2.0, "queue_ms": 1.0, "prefill_ms": 2.0, "decode_ms": 3.0,
          "total_ms": 6.0}


def _succeed(rid: int) -> bool:
    now = utcnow()
    with session_scope() as s:
        return queries.record_success(s, rid, result=RESULT, started_at=now,
                                      first_token_at=now, finished_at=now)


def test_migrations_match_the_models(llmq_env: dict[str, str]) -> None:
    upgrade()
    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_batch_rows_counts_and_state(llmq_env: dict[str, str]) -> None:
    upgrade()
    batch_id, ids = _batch(3, failed_line=True)
    assert len(ids) == 3  # the rejected line is stored failed, not queued
    with session_scope() as s:
        counts = queries.batch_counts(s, batch_id)
        assert counts == {"total": 4, "queued": 3, "running": 0, "succeeded": 0, "failed": 1,
                          "cancelled": 0}
        assert queries.batch_state(counts, False) == "running"  # some already ended
        claimed = queries.claim(s, ids[:2], "w1", max_attempts=3)
    assert [c.custom_id for c in claimed] == ["c0", "c1"]
    assert _succeed(ids[0]) and _succeed(ids[1])
    with session_scope() as s:
        queries.claim(s, ids[2:], "w1", max_attempts=3)
        assert queries.record_failure(s, ids[2], "boom")
        info = queries.batch_summary(s, queries.get_batch(s, batch_id))
    assert info["state"] == "completed"
    assert info["counts"]["succeeded"] == 2 and info["counts"]["failed"] == 2
    assert info["completion_tokens"] == 8


def test_a_result_is_written_once(llmq_env: dict[str, str]) -> None:
    upgrade()
    _, ids = _batch(1)
    with session_scope() as s:
        assert len(queries.claim(s, ids, "w1", 3)) == 1
        assert queries.claim(s, ids, "w2", 3) == []  # a second message while it runs: a look
    assert _succeed(ids[0])
    assert not _succeed(ids[0])  # a second write for it is refused
    with session_scope() as s:
        assert queries.claim(s, ids, "w3", 3) == []  # finished: nothing to claim
        assert s.scalar(select(func.count()).select_from(Result)) == 1
        assert s.get(Request, ids[0]).attempts == 1


def test_a_request_that_keeps_killing_workers_ends_failed(llmq_env: dict[str, str]) -> None:
    upgrade()
    _, ids = _batch(1)
    later = utcnow() + timedelta(seconds=1)  # every heartbeat so far is older than this
    for worker, handed_back in (("w1", ids), ("w2", [])):
        with session_scope() as s:  # a worker starts, claims, then falls silent
            workers.heartbeat(s, name=worker, host="h", pid=1, model="m", device="cpu",
                              last_step_at=None)
            assert len(queries.claim(s, ids, worker, max_attempts=2)) == 1
        with session_scope() as s:
            assert workers.stale_workers(s, utcnow() - timedelta(seconds=60)) == []  # alive
            assert workers.stale_workers(s, later) == [worker]
            assert workers.reclaim(s, later, max_attempts=2) == handed_back
            assert workers.stale_workers(s, later) == []  # reaped once
    with session_scope() as s:
        req = s.get(Request, ids[0])
        assert req.state == "failed" and "gave up after 2 attempts" in req.last_error
        assert queries.claim(s, ids, "w3", max_attempts=2) == []


def test_requests_of_a_process_with_no_worker_row_are_reaped(llmq_env: dict[str, str]) -> None:
    """Claimed before workers heartbeated (migration 0004): no row says who holds them."""
    upgrade()
    _, ids = _batch(3)
    with session_scope() as s:
        workers.heartbeat(s, name="alive", host="h", pid=1, model="m", device="cpu",
                          last_step_at=None)
        queries.claim(s, ids[:1], "alive", 3)
        queries.claim(s, ids[1:], "before-0004:42", 3)
    with session_scope() as s:  # too recent to call lost
        assert workers.reclaim(s, utcnow() - timedelta(seconds=60), max_attempts=3) == []
    later = utcnow()  # after the claims; the live worker beats again after it
    with session_scope() as s:
        workers.heartbeat(s, name="alive", host="h", pid=1, model="m", device="cpu",
                          last_step_at=None)
    with session_scope() as s:
        assert sorted(workers.reclaim(s, later, max_attempts=3)) == ids[1:]
        assert s.get(Request, ids[0]).state == "running"


def test_cancel_then_retry(llmq_env: dict[str, str]) -> None:
    upgrade()
    batch_id, ids = _batch(3)
    with session_scope() as s:
        queries.claim(s, ids[:1], "w1", 3)
        assert queries.cancel_batch(s, batch_id) == 3
        info = queries.batch_summary(s, queries.get_batch(s, batch_id))
        assert info["state"] == "cancelled" and info["counts"]["cancelled"] == 3
    assert not _succeed(ids[0])  # a cancelled request's late result is not stored
    with session_scope() as s:
        assert queries.retry_batch(s, batch_id) == []
        assert queries.retry_batch(s, batch_id, include_cancelled=True) == ids
        info = queries.batch_summary(s, queries.get_batch(s, batch_id))
        assert info["state"] == "queued" and info["counts"]["queued"] == 3


def test_a_claim_carries_its_batchs_priority_to_the_engine(llmq_env: dict[str, str]) -> None:
    from llmq.worker.processing import to_generation_request

    upgrade()
    reqs = [queries.NewRequest("c", "completion", {"prompt": "p"}, {"max_tokens": 4})]
    with session_scope() as s:
        _, high = queries.create_batch(s, requests=reqs, model="m", priority="high")
        _, low = queries.create_batch(s, requests=reqs, model="m", priority="low")
        claimed = queries.claim(s, [*high, *low], "w1", max_attempts=3)
    assert [c.priority for c in claimed] == ["high", "low"]
    assert [to_generation_request(c).rank for c in claimed] == [2, 0]
