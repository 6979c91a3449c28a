"""Worker liveness: every process that claims requests keeps a row here with its heartbeat,
and requests held by a process whose heartbeat went stale are handed back to the queue."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from llmq.contract import RequestKind

from .models import Batch, Request, RequestState, Worker, utcnow

_CHUNK = 2000


def heartbeat(session: Session, *, name: str, host: str, pid: int, model: str, device: str,
              last_step_at: datetime | None, stats: dict[str, Any] | None = None) -> None:
    """Records that ``name`` is alive (and when its engine last stepped, and its engine's
    counters)."""
    now = utcnow()
    moved = session.execute(update(Worker).where(Worker.name == name).values(
        heartbeat_at=now, last_step_at=last_step_at, stopped_at=None, stats=stats)).rowcount
    if not moved:
        session.add(Worker(name=name, host=host, pid=pid, model=model, device=device,
                           started_at=now, heartbeat_at=now, last_step_at=last_step_at,
                           stats=stats))
        session.flush()


def mark_stopped(session: Session, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow()))


def stale_workers(session: Session, heard_before: datetime) -> list[str]:
    """Workers not heard from since ``heard_before`` and not yet known to have stopped."""
    return list(session.execute(select(Worker.name).where(
        Worker.heartbeat_at < heard_before, Worker.stopped_at.is_(None))).scalars())


def reclaim(session: Session, heard_before: datetime, max_attempts: int) -> list[int]:
    """Hands the running requests of every worker that stopped, or that was not heard from
    since ``heard_before``, back to the queue, and marks those workers stopped; a request
    that has used all its attempts fails instead. Returns the ids to send again.
    Conditional, so two reapers never both take a request. A request running since before
    ``heard_before`` for a process with no row at all (one that claimed it before workers
    heartbeated, migration 0004) is handed back too."""
    now = utcnow()
    gone = select(Worker.name).where(or_(Worker.heartbeat_at < heard_before,
                                         Worker.stopped_at.is_not(None)))
    orphan = and_(or_(Request.worker.is_(None), Request.worker.not_in(select(Worker.name))),
                  func.coalesce(Request.started_at, Request.created_at) < heard_before)
    held = and_(Request.state == RequestState.RUNNING,
                or_(Request.worker.in_(gone), orphan))
    session.execute(update(Request).where(held, Request.attempts >= max_attempts).values(
        state=RequestState.FAILED, finished_at=now,
        last_error=f"gave up after {max_attempts} attempts: the worker running this request "
                   "stopped each time before finishing it"), execution_options={
        "synchronize_session": False})
    ids = list(session.execute(update(Request).where(held).values(
        state=RequestState.QUEUED, worker=None, started_at=None, first_token_at=None,
        enqueued_at=None).returning(Request.id), execution_options={
        "synchronize_session": False}).scalars())
    session.execute(update(Worker).where(Worker.heartbeat_at < heard_before,
                                         Worker.stopped_at.is_(None)).values(stopped_at=now))
    return ids


def released_by(session: Session, name: str) -> list[int]:
    """Requests ``name`` gave back to the queue that have no message yet."""
    return list(session.execute(select(Request.id).where(
        Request.state == RequestState.QUEUED, Request.worker == name,
        Request.enqueued_at.is_(None)).order_by(Request.id)).scalars())


def never_sent(session: Session, created_before: datetime, limit: int = 50_000) -> list[int]:
    """Queued requests with no message: a send that failed, or handed back to the queue."""
    return list(session.execute(select(Request.id).where(
        Request.state == RequestState.QUEUED, Request.kind != RequestKind.INVALID,
        Request.enqueued_at.is_(None), Request.created_at < created_before)
        .order_by(Request.id).limit(limit)).scalars())


def sent_before(session: Session, cutoff: datetime, limit: int = 50_000) -> list[int]:
    """Queued requests whose message was sent before ``cutoff`` and never claimed."""
    return list(session.execute(select(Request.id).where(
        Request.state == RequestState.QUEUED, Request.enqueued_at < cutoff)
        .order_by(Request.id).limit(limit)).scalars())


def routes(session: Session, ids: Sequence[int]) -> dict[tuple[str, str, str], list[int]]:
    """``ids`` grouped by the queue they go to: (model, device, priority) of their batch."""
    out: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for start in range(0, len(ids), _CHUNK):
        for rid, model, device, priority in session.execute(
                select(Request.id, Request.model, Batch.device, Batch.priority)
                .join(Batch, Batch.id == Request.batch_id)
                .where(Request.id.in_(ids[start:start + _CHUNK]))
                .order_by(Request.id)):
            out[(model, device, priority)].append(rid)
    return dict(out)
