"""Writing outcomes and keeping deadlines: a result the database cannot take fails its request
alone, with the reason, and a feeder never waits past its deadline, whatever the engine does."""

from __future__ import annotations

import threading
import time

import pytest

from llmq.contract import FinishReason
from llmq.db import queries
from llmq.db.migrate import upgrade
from llmq.db.models import Request, Result
from llmq.db.session import get_engine, session_factory, session_scope
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import STEP_FAILED, ErrorCause, GenerationResult, Timing
from llmq.worker.processing import WorkerIdentity, process_ids, store_result
from tests.conftest import Tiny


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
                              error=f"{STEP_FAILED}: out of memory", cause=ErrorCause.STEP)
    for attempt, state in ((1, "queued"), (2, "failed")):
        with session_scope() as s:
            claimed = queries.claim(s, ids, "w", max_attempts=2)
        assert claimed[0].attempts == attempt
        assert store_result(sessions, claimed[0], failed, ident, max_attempts=2) == state
    with session_scope() as s:
        req = s.get(Request, ids[0])
        assert req.state == "failed" and req.attempts == 2 and STEP_FAILED in req.last_error


def test_a_wedged_engine_cannot_hold_a_feeder_past_its_deadline(
        llmq_env: dict[str, str], tiny: Tiny) -> None:
    """The feeder's deadline is hard: past it, its requests fail in the database and it
    returns, whether or not the engine answers (here it never does)."""
    upgrade()
    with session_scope() as s:
        _, ids = queries.create_batch(s, requests=[queries.NewRequest(
            f"c{i}", "completion", {"prompt": "hello"}, {"max_tokens": 4}) for i in range(3)],
            model="tiny")
    engine = Engine.load(tiny.gguf, EngineConfig(slots=4, slot_length=128))
    wedge = threading.Event()

    def wedged(plan):  # noqa: ANN001, ANN202 - fault injection: a step that never ends
        wedge.wait(60)
        raise RuntimeError("unwedged")

    engine.runner.execute = wedged  # type: ignore[method-assign]
    try:
        outcome = process_ids(session_factory(), engine, ids,
                              WorkerIdentity("h", 1, "cpu", "tiny"), max_attempts=3,
                              cancel_poll=0.2, deadline=time.time() + 1.0)
        assert engine.stalled(0.5)  # what the worker's heartbeat thread would act on
    finally:
        wedge.set()
        engine.close()
    # without a hard deadline the feeder waited for the step to end (60 s here) and then
    # reported the requests as put back in the queue
    assert outcome == {"failed": 3}
    with session_scope() as s:
        assert {s.get(Request, i).last_error for i in ids} == {"time limit exceeded"}


def test_a_feeder_that_breaks_on_every_delivery_ends_its_requests(
        llmq_env: dict[str, str], tiny: Tiny) -> None:
    """A break in the feeder (here its result callback raises once the first request is
    stored) hands the rest back with the attempt counted, so a break that repeats on every
    delivery fails them after LLMQ_MAX_ATTEMPTS; an uncounted hand-back looped for ever."""
    upgrade()
    with session_scope() as s:
        _, ids = queries.create_batch(s, requests=[queries.NewRequest(
            f"c{i}", "completion", {"prompt": "hello"}, {"max_tokens": 2}) for i in range(3)],
            model="tiny")

    def broken(state: str, tokens: int) -> None:
        raise RuntimeError("a bug in the feeder")

    with Engine.load(tiny.gguf, EngineConfig(slots=1, slot_length=64)) as engine:
        for _delivery in (1, 2):
            with session_scope() as s:
                todo = [i for i in ids if s.get(Request, i).state == "queued"]
            with pytest.raises(RuntimeError, match="a bug in the feeder"):
                process_ids(session_factory(), engine, todo,
                            WorkerIdentity("h", 1, "cpu", "tiny"), max_attempts=2,
                            on_result=broken)
    with session_scope() as s:
        reqs = [s.get(Request, i) for i in ids]
        states = sorted(r.state for r in reqs)
        assert states == ["failed", "succeeded", "succeeded"], states
        failed = next(r for r in reqs if r.state == "failed")
        assert failed.attempts == 2
        assert failed.last_error == ("gave up after 2 attempts: the worker broke while "
                                     "running this request: a bug in the feeder")
