"""Writing outcomes: a result the database cannot take fails its request alone, with the
reason, instead of leaving it running for ever."""

from __future__ import annotations

import time

from llmq.contract import FinishReason
from llmq.db import queries
from llmq.db.migrate import upgrade
from llmq.db.models import Request, Result
from llmq.db.session import get_engine, session_factory, session_scope
from llmq.engine.engine import STEP_FAILED, GenerationResult, Timing
from llmq.worker.processing import WorkerIdentity, store_result


def _result(rid: int, text: str, prompt_tokens: int = 3) -> GenerationResult:
    now = time.time()
    timing = Timing(now, now, now, now, 1.0)
    return GenerationResult(str(rid), text, FinishReason.STOP, prompt_tokens, 2, timing)


def test_a_result_the_database_refuses_fails_its_request_alone(
        llmq_env: dict[str, str]) -> None:
    upgrade()
    reqs = [queries.NewRequest(f"c{i}", "completion", {"prompt": "p"}, {}) for i in range(3)]
    with session_scope() as s:
        _, ids = queries.create_batch(s, requests=reqs, model="m")
        claimed = queries.claim(s, ids, "w", 3)
    ident = WorkerIdentity("h", 1, "cpu", "m")
    sessions = session_factory()
    assert store_result(sessions, claimed[0], _result(ids[0], "a\x00b"), ident) == "succeeded"
    assert store_result(sessions, claimed[2], _result(ids[2], "fine"), ident) == "succeeded"
    postgres = get_engine().dialect.name == "postgresql"
    if postgres:  # finish_reason is 20 characters wide there; SQLite does not check
        state = store_result(sessions, claimed[1], _result(ids[1], "x", 2**40), ident)
        assert state == "failed"
    with session_scope() as s:
        assert s.query(Result).filter_by(request_id=ids[0]).one().text == "a\ufffdb"
        if postgres:
            req = s.get(Request, ids[1])
            assert req.state == "failed"
            assert req.last_error.startswith("could not store the result: integer out of range")
        assert s.get(Request, ids[2]).state == "succeeded"


def test_a_request_caught_in_a_failed_step_is_tried_again_while_it_has_attempts(
        llmq_env: dict[str, str]) -> None:
    upgrade()
    with session_scope() as s:
        _, ids = queries.create_batch(s, requests=[queries.NewRequest(
            "c", "completion", {"prompt": "p"}, {})], model="m")
    ident = WorkerIdentity("h", 1, "cpu", "m")
    sessions = session_factory()
    failed = GenerationResult(str(ids[0]), "", FinishReason.ERROR, 0, 0, Timing(time.time()),
                              error=f"{STEP_FAILED}: out of memory")
    for attempt, state in ((1, "queued"), (2, "failed")):
        with session_scope() as s:
            claimed = queries.claim(s, ids, "w", max_attempts=2)
        assert claimed[0].attempts == attempt
        assert store_result(sessions, claimed[0], failed, ident, max_attempts=2) == state
    with session_scope() as s:
        req = s.get(Request, ids[0])
        assert req.state == "failed" and req.attempts == 2 and STEP_FAILED in req.last_error
