"""Running stored requests through an engine: claim, submit, wait, write each result once.
The Celery feeders and the embedded ``llmq run`` both call ``process_ids``, so a request is
handled the same way wherever it runs."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from llmq import failpoints
from llmq.contract import PRIORITY_RANKS, FinishReason, RequestKind, SamplingParams
from llmq.db import queries
from llmq.db.models import RequestState
from llmq.db.queries import Claimed
from llmq.engine.engine import Engine
from llmq.engine.generation import ErrorCause, GenerationRequest, GenerationResult
from llmq.worker.token_stream import Publisher

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerIdentity:
    host: str
    pid: int
    device: str
    model: str
    # tells two lives of one pid apart (a container restarted keeps its pid 1), so a
    # request held by the last life is never taken for the current one's
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @classmethod
    def here(cls, device: str, model: str) -> WorkerIdentity:
        return cls(socket.gethostname(), os.getpid(), device, model)

    @property
    def label(self) -> str:
        """What ``requests.worker`` and ``workers.name`` hold."""
        return f"{self.host}:{self.pid}:{self.token}"


def to_generation_request(claimed: Claimed) -> GenerationRequest:
    """The engine's request for a stored one; ValueError names what cannot be run."""
    params = SamplingParams.from_stored(claimed.params)
    rid = str(claimed.id)
    rank = PRIORITY_RANKS.get(claimed.priority, PRIORITY_RANKS["normal"])
    if claimed.kind == RequestKind.CHAT:
        return GenerationRequest(messages=claimed.input["messages"], params=params,
                                 request_id=rid, rank=rank)
    return GenerationRequest(prompt=claimed.input["prompt"], params=params, request_id=rid,
                             rank=rank)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _ms(a: datetime, b: datetime) -> float:
    return round((b - a).total_seconds() * 1000.0, 3)


def write_result(session: Session, claimed: Claimed, result: GenerationResult,
                 ident: WorkerIdentity, max_attempts: int = 1) -> str:
    """Stores one outcome; returns the request's state as this worker left it. A request
    caught in a failed engine step goes back to the queue while it has attempts left."""
    t = result.timing
    if result.finish_reason == FinishReason.CANCELLED:
        if result.cause == ErrorCause.CLOSED:  # this process is stopping: another will run it
            queries.release(session, [claimed.id])
            return RequestState.QUEUED
        return RequestState.CANCELLED
    if not result.ok:
        error = result.error or result.finish_reason
        if result.cause == ErrorCause.STEP and claimed.attempts < max_attempts:
            queries.requeue(session, claimed.id)
            return RequestState.QUEUED
        queries.record_failure(session, claimed.id, error)
        return RequestState.FAILED
    started = max(_utc(t.started_at or t.submitted_at), claimed.created_at)
    first = max(_utc(t.first_token_at or t.finished_at or time.time()), started)
    finished = max(_utc(t.finished_at or time.time()), first)
    created = claimed.created_at
    row = {
        # PostgreSQL text cannot hold NUL, which a byte-level tokenizer can emit
        "text": result.text.replace("\x00", "\ufffd"), "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cached_tokens": result.cached_tokens,
        "worker_host": ident.host, "worker_pid": ident.pid, "device": ident.device,
        "model": ident.model, "engine_batch_size": t.batch_size,
        "queue_ms": _ms(created, started), "prefill_ms": _ms(started, first),
        "decode_ms": _ms(first, finished), "total_ms": _ms(created, finished),
    }
    ok = queries.record_success(session, claimed.id, result=row, started_at=started,
                                first_token_at=first, finished_at=finished)
    return RequestState.SUCCEEDED if ok else "skipped"


def transact(sessions: sessionmaker[Session], what: str, work: Callable[[Session], T],
             patience: float = 0.0) -> T:
    """``work`` in a transaction of its own. While the database is away (an operational
    error: connection refused or lost, SQLite locked), it is tried again with backoff for up
    to ``patience`` seconds, so a worker rides out an outage holding what it has (its
    claims, its finished results) instead of dropping it."""
    give_up = time.monotonic() + patience
    delay = 0.5
    while True:
        try:
            with sessions.begin() as session:
                return work(session)
        except OperationalError as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("database unavailable while %s, trying again in %.1fs: %s", what,
                        delay, _first_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:500]


def store_result(sessions: sessionmaker[Session], claimed: Claimed, result: GenerationResult,
                 ident: WorkerIdentity, patience: float = 0.0, max_attempts: int = 1) -> str:
    """``write_result`` in its own transaction, through outages of up to ``patience``
    seconds. When the database refuses the row itself (a value it cannot store), the request
    fails with that reason instead of staying running for ever."""
    try:
        return transact(sessions, f"storing request {claimed.id}",
                        lambda s: write_result(s, claimed, result, ident, max_attempts),
                        patience)
    except OperationalError:
        raise
    except SQLAlchemyError as exc:
        reason = _first_line(exc)
        log.error("request %s: the database refused its result: %s", claimed.id, reason)
        transact(sessions, f"failing request {claimed.id}", lambda s: queries.record_failure(
            s, claimed.id, f"could not store the result: {reason}"), patience)
        return RequestState.FAILED


# Requests lost twice run one at a time, process-wide: if one of them is what kills
# workers, it takes no other suspect with it.
_QUARANTINE = threading.Lock()


def process_ids(sessions: sessionmaker[Session], engine: Engine, ids: Sequence[int],
                ident: WorkerIdentity, *, max_attempts: int, cancel_poll: float = 1.0,
                deadline: float | None = None, db_patience: float = 0.0,
                on_result: Callable[[str, int], None] | None = None,
                publisher: Publisher | None = None) -> dict[str, int]:
    """Claims ``ids``, runs them on ``engine`` and writes their outcomes as each finishes.
    The tokens of requests stored with ``stream`` go to ``publisher`` as they come.
    Returns how many ended in each state. Requests cancelled in the database meanwhile are
    cancelled in the engine within ``cancel_poll`` seconds. Database outages of up to
    ``db_patience`` seconds are waited out: nothing is claimed meanwhile, and finished
    results wait in memory (a message's worth per feeder) until they can be written.

    Requests that ran before without finishing (their worker was lost, or a step failed)
    are suspects. Fresh ones run together first; then those lost once, together again
    (most were lost to whatever killed their worker, not by their own fault, and running
    them one by one would stall a worker after every crash); then each one lost twice
    alone, claimed only when its turn comes. A request that crashes its worker every time
    so fails alone on its last attempt, and what shared its message still gets one run
    without it."""
    lost = transact(sessions, "looking for suspects",
                    lambda s: queries.ran_before(s, ids), db_patience)
    run = functools.partial(_process, sessions, engine, ident=ident, max_attempts=max_attempts,
                            cancel_poll=cancel_poll, deadline=deadline,
                            db_patience=db_patience, on_result=on_result,
                            publisher=publisher)
    outcome = run([i for i in ids if i not in lost])
    for state, n in run([i for i in ids if lost.get(i) == 1]).items():
        outcome[state] = outcome.get(state, 0) + n
    for rid in (i for i in ids if lost.get(i, 0) >= 2):
        with _QUARANTINE:
            if deadline is not None and time.time() > deadline:
                break  # unclaimed, they stay queued: the reconciler sends them again
            for state, n in run([rid]).items():
                outcome[state] = outcome.get(state, 0) + n
    return outcome


def _process(sessions: sessionmaker[Session], engine: Engine, ids: Sequence[int], *,
             ident: WorkerIdentity, max_attempts: int, cancel_poll: float,
             deadline: float | None, db_patience: float,
             on_result: Callable[[str, int], None] | None,
             publisher: Publisher | None = None) -> dict[str, int]:
    if not ids:
        return {}
    claimed = transact(sessions, "claiming", lambda s: queries.claim(
        s, ids, ident.label, max_attempts), db_patience)
    outcome: dict[str, int] = {}
    futures: dict[Future[GenerationResult], Claimed] = {}
    for c in claimed:
        try:
            if c.model != ident.model:
                raise ValueError(f"request wants model {c.model!r} but reached a worker "
                                 f"serving {ident.model!r}")
            request = to_generation_request(c)
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"cannot run this request: {exc}"
            transact(sessions, f"failing request {c.id}",
                     lambda s, c=c, reason=reason: queries.record_failure(s, c.id, reason),
                     db_patience)
            outcome["failed"] = outcome.get("failed", 0) + 1
            continue
        if failpoints.armed():  # the fault tests only: no serialization otherwise
            failpoints.request_starting(request.request_id, json.dumps(
                [request.prompt, request.messages]), engine)
        on_token = (publisher.pieces(c.id, request.params.stop)
                    if publisher is not None and c.params.get("stream") else None)
        futures[engine.submit(request, on_token)] = c
    pending, unstored = set(futures), set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=cancel_poll, return_when=FIRST_COMPLETED)
            for fut in done:
                c = futures[fut]
                state = str(store_result(sessions, c, fut.result(), ident, db_patience,
                                         max_attempts))
                unstored.discard(fut)
                outcome[state] = outcome.get(state, 0) + 1
                if publisher is not None and c.params.get("stream") and state != "queued":
                    publisher.end(c.id)
                if on_result is not None:
                    on_result(state, fut.result().completion_tokens)
            if pending and _cancel_or_expire(sessions, engine, [futures[f] for f in pending],
                                             deadline):
                # past the deadline: failed in the database and cancelled in the engine;
                # a wedged engine would never answer, so stop waiting for it
                outcome["failed"] = outcome.get("failed", 0) + len(pending)
                return outcome
    except BaseException as exc:
        # what did not finish goes back to the queue: uncounted when interrupted (Ctrl-C,
        # shutdown), counted when this code broke, so a break that repeats ends in failed
        unfinished = [futures[f].id for f in unstored]
        for rid in unfinished:
            engine.cancel(str(rid))
        if isinstance(exc, Exception) and not isinstance(exc, OperationalError):
            error = f"the worker broke while running this request: {_first_line(exc)}"
            transact(sessions, "handing back unfinished requests", lambda s: queries.give_back(
                s, unfinished, error, max_attempts), db_patience)
        else:
            transact(sessions, "handing back unfinished requests",
                     lambda s: queries.release(s, unfinished), db_patience)
        raise
    return outcome


def _cancel_or_expire(sessions: sessionmaker[Session], engine: Engine, running: list[Claimed],
                      deadline: float | None) -> bool:
    """Cancels in the engine what was cancelled in the database; past ``deadline``, fails
    everything still running and returns True (the caller stops waiting)."""
    if deadline is not None and time.time() > deadline:
        with sessions.begin() as session:
            for c in running:
                queries.record_failure(session, c.id, "time limit exceeded")
                engine.cancel(str(c.id))
        return True
    try:
        with sessions.begin() as session:
            cancelled = queries.cancelled_among(session, (c.id for c in running))
    except OperationalError:  # the database is away: look again at the next poll
        return False
    for rid in cancelled:
        engine.cancel(str(rid))
    return False
