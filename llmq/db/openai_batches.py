"""Queries of batches created over HTTP (the OpenAI Batch API): ownership, idempotent
creation, counts of many batches at once, expiry and finalization. Their requests are
ordinary rows, run like every other batch's."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from llmq.contract import RequestKind

from .files import owned
from .models import Batch, Request, RequestState, Result, utcnow
from .queries import COUNT_KEYS

UNFINISHED = (RequestState.QUEUED, RequestState.RUNNING)
EXPIRED_ERROR = "batch_expired: the batch's completion window passed before this request ran"


def find_by_idempotency(session: Session, key: str) -> Batch | None:
    return session.execute(select(Batch).where(Batch.idempotency_key == key)
                           ).scalar_one_or_none()


def add_http_batch(session: Session, **fields: Any) -> Batch:
    batch = Batch(created_at=utcnow(), **fields)
    session.add(batch)
    session.flush()
    return batch


def owned_batch(session: Session, batch_id: str, owner: str | None) -> Batch | None:
    return session.execute(select(Batch).where(
        Batch.id == batch_id, owned(Batch.owner, owner))).scalar_one_or_none()


def list_owned(session: Session, owner: str | None, after: str | None = None,
               limit: int = 20) -> list[Batch]:
    """A page of the owner's batches made from files (not the single requests of
    /v1/chat/completions), newest first, ``after`` the batch of that id."""
    stmt = select(Batch).where(owned(Batch.owner, owner), Batch.input_file_id.is_not(None))
    cursor = owned_batch(session, after, owner) if after else None
    if cursor is not None:
        stmt = stmt.where((Batch.created_at < cursor.created_at) | (
            (Batch.created_at == cursor.created_at) & (Batch.id < cursor.id)))
    return list(session.execute(stmt.order_by(Batch.created_at.desc(), Batch.id.desc())
                                .limit(limit)).scalars())


def mark_validated(session: Session, batch_id: str, failed: bool) -> None:
    now = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        validated_at=now, failed_at=now if failed else None))


def counts_of(session: Session, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    """Each batch's counts by state (as ``queries.batch_counts``), in one query."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNT_KEYS, 0))
    if batch_ids:
        for batch_id, state, n in session.execute(
                select(Request.batch_id, Request.state, func.count())
                .where(Request.batch_id.in_(batch_ids))
                .group_by(Request.batch_id, Request.state)):
            counts[batch_id][state] = n
            counts[batch_id]["total"] += n
    return {b: counts[b] for b in batch_ids}


def rejected_lines(session: Session, batch_id: str, limit: int = 1000
                   ) -> list[tuple[int | None, str, str | None]]:
    """(line, custom id, reason) of the batch's lines that were never valid requests."""
    return [tuple(r) for r in session.execute(  # type: ignore[misc]
        select(Request.line, Request.custom_id, Request.last_error)
        .where(Request.batch_id == batch_id, Request.kind == RequestKind.INVALID)
        .order_by(Request.id).limit(limit))]


def expire_due(session: Session, now: datetime | None = None,
               batch_id: str | None = None) -> list[str]:
    """Ends the unfinished requests of batches whose completion window has passed (as a
    cancel does: running ones leave their engine at its next step); returns those batches."""
    now = now or utcnow()
    unfinished = exists(select(Request.id).where(Request.batch_id == Batch.id,
                                                 Request.state.in_(UNFINISHED)))
    stmt = select(Batch.id).where(Batch.expires_at < now, Batch.expired_at.is_(None),
                                  Batch.cancelled_at.is_(None), Batch.finalized_at.is_(None),
                                  unfinished)
    if batch_id is not None:
        stmt = stmt.where(Batch.id == batch_id)
    expired = list(session.execute(stmt).scalars())
    for due in expired:
        session.execute(update(Batch).where(Batch.id == due).values(expired_at=now))
        session.execute(update(Request).where(Request.batch_id == due,
                                              Request.state.in_(UNFINISHED))
                        .values(state=RequestState.CANCELLED, finished_at=now,
                                last_error=EXPIRED_ERROR))
    return expired


def mark_finalized(session: Session, batch_id: str, output_file_id: str | None,
                   error_file_id: str | None) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id, Batch.finalized_at.is_(None))
                    .values(finalized_at=utcnow(), output_file_id=output_file_id,
                            error_file_id=error_file_id))


def reopen(session: Session, batch_id: str) -> None:
    """A batch that runs again (`llmq retry`, the status page) is finalized again when it
    ends: its earlier output and error files stay in the Files API until they expire."""
    session.execute(update(Batch).where(Batch.id == batch_id)
                    .values(finalized_at=None, output_file_id=None, error_file_id=None))


def busy_requests(session: Session, owner: str | None = None, everyone: bool = False) -> int:
    """Queued and running requests of ``owner``'s batches (of every batch, ``everyone``)."""
    stmt = select(func.count()).select_from(Request).where(Request.state.in_(UNFINISHED))
    if not everyone:
        stmt = stmt.join(Batch, Batch.id == Request.batch_id).where(owned(Batch.owner, owner))
    return int(session.execute(stmt).scalar_one())


def request_with_result(session: Session, request_id: int) -> tuple[Request, Result | None]:
    req, res = session.execute(select(Request, Result)
                               .outerjoin(Result, Result.request_id == Request.id)
                               .where(Request.id == request_id)).one()
    return req, res
