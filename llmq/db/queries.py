"""The queries the CLI, the workers and the embedded runner share. Every state change is a
conditional UPDATE, so two workers holding the same request can never both win."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from llmq.contract import RequestKind

from .models import Batch, Request, RequestState, Result, utcnow

COUNT_KEYS = ("total", "queued", "running", "succeeded", "failed", "cancelled")
_INSERT_CHUNK = 2000


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:20]


@dataclass
class NewRequest:
    custom_id: str
    kind: str
    input: dict[str, Any]
    params: dict[str, Any]
    line: int | None = None
    error: str | None = None  # set: the request is stored as failed with this error


def create_batch(session: Session, *, requests: Sequence[NewRequest], model: str,
                 device: str = "any", priority: str = "normal", name: str | None = None,
                 source_file: str | None = None,
                 meta: dict[str, Any] | None = None) -> tuple[str, list[int]]:
    """Writes the batch and all its requests; returns the batch id and the ids of the
    requests to run, in input order."""
    batch_id = add_batch(session, model=model, device=device, priority=priority, name=name,
                         source_file=source_file, meta=meta)
    return batch_id, add_requests(session, batch_id, model, requests)


def add_batch(session: Session, *, model: str, device: str = "any", priority: str = "normal",
              name: str | None = None, source_file: str | None = None,
              meta: dict[str, Any] | None = None) -> str:
    """The batch row alone; its requests follow in chunks (``add_requests``)."""
    batch_id = new_batch_id()
    session.add(Batch(id=batch_id, name=name, model=model, device=device, priority=priority,
                      source_file=source_file, meta=meta or {}, created_at=utcnow()))
    session.flush()
    return batch_id


def mark_stored(session: Session, batch_id: str, notify_url: str | None = None) -> None:
    """Every line of a CLI batch is stored: from now on its end can be announced."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        validated_at=utcnow(), **({"notify_url": notify_url} if notify_url else {})))


def add_requests(session: Session, batch_id: str, model: str,
                 requests: Sequence[NewRequest]) -> list[int]:
    """Writes requests of ``batch_id``; returns the ids of those to run, in input order."""
    now = utcnow()
    rows = [{
        "batch_id": batch_id, "custom_id": r.custom_id, "line": r.line, "model": model,
        "input": r.input, "params": r.params, "kind": r.kind,
        "state": RequestState.FAILED if r.error else RequestState.QUEUED,
        "attempts": 0, "last_error": r.error, "created_at": now,
        "finished_at": now if r.error else None,
    } for r in requests]
    ids: list[int] = []
    stmt = insert(Request).returning(Request.id, Request.state, sort_by_parameter_order=True)
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start:start + _INSERT_CHUNK]
        ids += [rid for rid, state in session.execute(stmt, chunk)
                if state == RequestState.QUEUED]
    return ids


def mark_enqueued(session: Session, ids: Sequence[int]) -> None:
    now = utcnow()
    for start in range(0, len(ids), _INSERT_CHUNK):
        session.execute(update(Request)
                        .where(Request.id.in_(ids[start:start + _INSERT_CHUNK]))
                        .values(enqueued_at=now))


def unsent_ids(session: Session, ids: Sequence[int]) -> list[int]:
    """Those of ``ids`` still queued with no message sent for them."""
    out: list[int] = []
    for start in range(0, len(ids), _INSERT_CHUNK):
        out += session.execute(select(Request.id).where(
            Request.id.in_(ids[start:start + _INSERT_CHUNK]),
            Request.state == RequestState.QUEUED, Request.enqueued_at.is_(None))).scalars()
    return out


@dataclass
class Claimed:
    id: int
    batch_id: str
    custom_id: str
    model: str
    kind: str
    input: dict[str, Any]
    params: dict[str, Any]
    created_at: datetime
    attempts: int
    priority: str = "normal"  # its batch's


def claim(session: Session, ids: Sequence[int], worker: str,
          max_attempts: int) -> list[Claimed]:
    out: list[Claimed] = []
    for start in range(0, len(ids), _INSERT_CHUNK):
        out += _claim(session, ids[start:start + _INSERT_CHUNK], worker, max_attempts)
    return out


def _claim(session: Session, ids: Sequence[int], worker: str,
           max_attempts: int) -> list[Claimed]:
    """Takes the requests among ``ids`` that are queued. A running one is never taken from
    here, even when its message came again: its worker holds it while it heartbeats, and the
    reaper (db/workers.py) hands it back to the queue once that worker falls silent. So a
    message sent twice (a resend, a redelivery) costs one look, never a second run."""
    taken = session.execute(
        update(Request)
        .where(Request.id.in_(ids), Request.state == RequestState.QUEUED,
               Request.attempts < max_attempts)
        .values(state=RequestState.RUNNING, attempts=Request.attempts + 1, worker=worker,
                started_at=None, first_token_at=None)
        .returning(Request.id)
    ).scalars().all()
    if not taken:
        return []
    rows = session.execute(select(Request, Batch.priority).join(Batch)
                           .where(Request.id.in_(taken)).order_by(Request.id)).all()
    return [Claimed(r.id, r.batch_id, r.custom_id, r.model, r.kind, r.input, r.params,
                    r.created_at, r.attempts, priority) for r, priority in rows]


def _insert_ignore(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Result)


def record_success(session: Session, request_id: int, *, result: dict[str, Any],
                   started_at: datetime, first_token_at: datetime,
                   finished_at: datetime) -> bool:
    """Stores the request's one result. False (and nothing written) when the request is no
    longer running here: cancelled meanwhile, or already finished by another delivery."""
    moved = session.execute(
        update(Request)
        .where(Request.id == request_id, Request.state == RequestState.RUNNING)
        .values(state=RequestState.SUCCEEDED, started_at=started_at,
                first_token_at=first_token_at, finished_at=finished_at, last_error=None)
    ).rowcount
    if not moved:
        return False
    stmt = _insert_ignore(session).values(request_id=request_id, **result)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["request_id"]))
    return True


def record_failure(session: Session, request_id: int, error: str) -> bool:
    return bool(session.execute(
        update(Request)
        .where(Request.id == request_id, Request.state == RequestState.RUNNING)
        .values(state=RequestState.FAILED, last_error=error, finished_at=utcnow())
    ).rowcount)


def ran_before(session: Session, ids: Sequence[int]) -> dict[int, int]:
    """The queued requests among ``ids`` that were claimed before and never finished, with
    how many times: their worker was lost, or a failed step sent them back (a clean
    hand-back uncounts its attempt, so it is not among them)."""
    found: dict[int, int] = {}
    for start in range(0, len(ids), _INSERT_CHUNK):
        found.update((rid, attempts) for rid, attempts in session.execute(
            select(Request.id, Request.attempts).where(
                Request.id.in_(ids[start:start + _INSERT_CHUNK]),
                Request.state == RequestState.QUEUED, Request.attempts > 0)))
    return found


def release(session: Session, ids: Sequence[int]) -> None:
    """Gives claimed requests back to the queue, the attempt uncounted (a process stopping
    cleanly). They keep the name of the worker that released them and have no message: that
    worker sends them again as it stops (db.workers.released_by), or, if it cannot, any
    worker's reconciler does."""
    session.execute(update(Request)
                    .where(Request.id.in_(ids), Request.state == RequestState.RUNNING)
                    .values(state=RequestState.QUEUED, attempts=Request.attempts - 1,
                            enqueued_at=None))


def requeue(session: Session, request_id: int) -> bool:
    """Back to the queue with the attempt counted and no message (the reconciler sends it):
    for a request that failed through no fault of its own."""
    return bool(session.execute(
        update(Request)
        .where(Request.id == request_id, Request.state == RequestState.RUNNING)
        .values(state=RequestState.QUEUED, enqueued_at=None, started_at=None,
                first_token_at=None)).rowcount)


def give_back(session: Session, ids: Sequence[int], error: str, max_attempts: int) -> None:
    """Hands back requests whose feeder broke (a bug, not a stop) with the attempt counted
    and the error kept, so an error that repeats on every delivery ends in ``failed`` after
    ``max_attempts`` instead of looping for ever; no message (the reconciler sends them)."""
    running = (Request.id.in_(ids), Request.state == RequestState.RUNNING)
    session.execute(update(Request).where(*running, Request.attempts >= max_attempts).values(
        state=RequestState.FAILED, finished_at=utcnow(),
        last_error=f"gave up after {max_attempts} attempts: {error}"[:2000]))
    session.execute(update(Request).where(*running).values(
        state=RequestState.QUEUED, enqueued_at=None, started_at=None, first_token_at=None,
        last_error=error[:2000]))


def cancelled_among(session: Session, ids: Iterable[int]) -> set[int]:
    ids = list(ids)
    if not ids:
        return set()
    return set(session.execute(select(Request.id).where(
        Request.id.in_(ids), Request.state == RequestState.CANCELLED)).scalars())


# --- batches ------------------------------------------------------------------------------

def batch_counts(session: Session, batch_id: str) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for state, n in session.execute(select(Request.state, func.count())
                                    .where(Request.batch_id == batch_id)
                                    .group_by(Request.state)):
        counts[state] = n
        counts["total"] += n
    return counts


def batch_state(counts: dict[str, int], cancelled: bool) -> str:
    if counts["queued"] or counts["running"]:
        if counts["running"] or counts["total"] > counts["queued"]:
            return "running"
        return "queued"
    return "cancelled" if cancelled else "completed"


def get_batch(session: Session, batch_id: str) -> Batch | None:
    return session.get(Batch, batch_id)


def batch_usage(session: Session, batch_id: str) -> dict[str, Any]:
    """The tokens of the batch's results, in the shape of OpenAI's batch ``usage`` (cached:
    prompt tokens the prefix cache served; llmq has no reasoning tokens)."""
    prompt, cached, completion = session.execute(
        select(func.coalesce(func.sum(Result.prompt_tokens), 0),
               func.coalesce(func.sum(Result.cached_tokens), 0),
               func.coalesce(func.sum(Result.completion_tokens), 0))
        .select_from(Result).join(Request, Result.request_id == Request.id)
        .where(Request.batch_id == batch_id)).one()
    prompt, cached, completion = int(prompt), int(cached), int(completion)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def batch_summary(session: Session, batch: Batch) -> dict[str, Any]:
    counts = batch_counts(session, batch.id)
    started, finished = session.execute(
        select(func.min(Request.started_at), func.max(Request.finished_at))
        .where(Request.batch_id == batch.id)).one()
    usage = batch_usage(session, batch.id)
    state = batch_state(counts, batch.cancelled_at is not None)
    return {
        "id": batch.id, "name": batch.name, "state": state, "counts": counts,
        "model": batch.model, "device": batch.device, "priority": batch.priority,
        "created_at": _iso(batch.created_at), "started_at": _iso(started),
        "finished_at": _iso(finished) if state in ("completed", "cancelled") else None,
        "completion_tokens": usage["output_tokens"], "source_file": batch.source_file,
        "usage": usage,
    }


def list_batches(session: Session, limit: int = 20) -> list[Batch]:
    return list(session.execute(select(Batch).order_by(Batch.created_at.desc()).limit(limit))
                .scalars())


def cancel_batch(session: Session, batch_id: str) -> int:
    """Cancels what has not finished: queued requests never start, running ones leave the
    engine at its next step (their worker polls for this)."""
    now = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=now))
    return session.execute(
        update(Request)
        .where(Request.batch_id == batch_id,
               Request.state.in_([RequestState.QUEUED, RequestState.RUNNING]))
        .values(state=RequestState.CANCELLED, finished_at=now)
    ).rowcount


def retry_batch(session: Session, batch_id: str, include_cancelled: bool = False) -> list[int]:
    """Queues failed requests again (and cancelled ones if asked) with fresh attempts, and
    returns those with every queued request of the batch: the ids to send (again). A queued
    request whose message was lost is re-sent this way; one whose message is still there
    gets a second one, which costs a look. Lines that were never valid input stay failed:
    running them again cannot help. Running requests of silent workers are the reaper's."""
    states = [RequestState.FAILED] + ([RequestState.CANCELLED] if include_cancelled else [])
    again = list(session.execute(
        select(Request.id).where(Request.batch_id == batch_id,
                                 Request.kind != RequestKind.INVALID, Request.state.in_(states))
        .order_by(Request.id)).scalars())
    if again:  # it runs again: its next end is announced again (a new event)
        session.execute(update(Batch).where(Batch.id == batch_id).values(announced_at=None))
    for start in range(0, len(again), _INSERT_CHUNK):
        session.execute(update(Request)
                        .where(Request.id.in_(again[start:start + _INSERT_CHUNK]))
                        .values(state=RequestState.QUEUED, attempts=0, last_error=None,
                                started_at=None, first_token_at=None, finished_at=None,
                                enqueued_at=None))
    if include_cancelled:
        session.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=None))
    return list(session.execute(
        select(Request.id).where(Request.batch_id == batch_id,
                                 Request.state == RequestState.QUEUED)
        .order_by(Request.id)).scalars())


def result_rows(session: Session, batch_id: str,
                chunk: int = 1000) -> Iterator[tuple[Request, Result | None]]:
    """Every request of the batch with its result, in input order, streamed."""
    last = 0
    while True:
        stmt: Select[tuple[Request, Result]] = (
            select(Request, Result).outerjoin(Result, Result.request_id == Request.id)
            .where(Request.batch_id == batch_id, Request.id > last)
            .order_by(Request.id).limit(chunk))
        rows = session.execute(stmt).all()
        if not rows:
            return
        yield from ((req, res) for req, res in rows)
        last = rows[-1][0].id


def timing_rows(session: Session, batch_id: str | None) -> list[tuple[Any, ...]]:
    """(created, started, first token, finished, completion tokens, queue ms, its batch's
    priority) of every succeeded request, of one batch or of all."""
    stmt = (select(Request.created_at, Request.started_at, Request.first_token_at,
                   Request.finished_at, Result.completion_tokens, Result.queue_ms,
                   Batch.priority)
            .join(Result, Result.request_id == Request.id)
            .join(Batch, Batch.id == Request.batch_id))
    if batch_id:
        stmt = stmt.where(Request.batch_id == batch_id)
    return [tuple(r) for r in session.execute(stmt)]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None
