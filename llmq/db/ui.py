"""What the status page reads: one page of batches with their counts, a batch's progress
and failures, throughput over time, and the browser sessions of people signed in. Every
query is bounded by a page or an index range, so a page costs the same with a million
requests stored as with a hundred."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, and_, case, cast, delete, exists, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .files import owned
from .models import ApiKey, Batch, PipelineRun, Request, RequestState, Result, UiSession

EVERYONE = "*"  # the scope of an admin (or open mode): every owner's batches
# the states of `llmq status`, derived from the requests; "failed": some request failed
BATCH_FILTERS = ("queued", "running", "completed", "cancelled", "failed")


def _any_request(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists(select(Request.id).where(Request.batch_id == Batch.id, *conditions))


def batch_state_filter(state: str) -> ColumnElement[bool]:
    """The rows whose derived state (queries.batch_state) is ``state``: index probes on
    (batch_id, state) per batch, never a count of its requests."""
    active = _any_request(Request.state.in_([RequestState.QUEUED, RequestState.RUNNING]))
    started = _any_request(Request.state != RequestState.QUEUED)
    return {
        "queued": and_(_any_request(Request.state == RequestState.QUEUED), ~started),
        "running": and_(active, started),
        "completed": and_(~active, Batch.cancelled_at.is_(None)),
        "cancelled": and_(~active, Batch.cancelled_at.is_not(None)),
        "failed": _any_request(Request.state == RequestState.FAILED),
    }[state]


def _owned_by(owner: str | None) -> ColumnElement[bool] | None:
    return None if owner == EVERYONE else owned(Batch.owner, owner)


def batch_page(session: Session, owner: str | None, state: str | None, offset: int,
               limit: int) -> tuple[list[Batch], int]:
    """Batches newest first, of one owner (``EVERYONE``: all) and one derived state (None:
    any), from ``offset``; with how many match in all."""
    conditions = [c for c in (_owned_by(owner), batch_state_filter(state) if state else None)
                  if c is not None]
    rows = list(session.execute(select(Batch).where(*conditions)
                                .order_by(Batch.created_at.desc(), Batch.id.desc())
                                .offset(offset).limit(limit)).scalars())
    total = session.scalar(select(func.count()).select_from(Batch).where(*conditions)) or 0
    return rows, int(total)


def first_starts(session: Session, batch_ids: Sequence[str]) -> dict[str, datetime]:
    """When each batch's first request started (for an ETA)."""
    if not batch_ids:
        return {}
    return {b: t for b, t in session.execute(
        select(Request.batch_id, func.min(Request.started_at))
        .where(Request.batch_id.in_(batch_ids)).group_by(Request.batch_id)) if t}


def key_names(session: Session, key_ids: Sequence[str]) -> dict[str, str]:
    if not key_ids:
        return {}
    return {key_id: name for key_id, name in session.execute(
        select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(key_ids)))}


def finished_over_time(session: Session, batch_id: str, edges: Sequence[datetime]
                       ) -> list[int]:
    """How many of the batch's requests had ended by each of ``edges`` (one pass)."""
    columns = [func.sum(case((Request.finished_at <= t, 1), else_=0)) for t in edges]
    row = session.execute(select(*columns).where(Request.batch_id == batch_id,
                                                 Request.finished_at.is_not(None))).one()
    return [int(v or 0) for v in row]


def batch_span(session: Session, batch_id: str) -> tuple[datetime | None, datetime | None]:
    """The first start and the last end among the batch's requests."""
    first, last = session.execute(select(func.min(Request.started_at),
                                         func.max(Request.finished_at))
                                  .where(Request.batch_id == batch_id)).one()
    return first, last


def failed_requests(session: Session, batch_id: str, limit: int
                    ) -> tuple[list[tuple[str, int | None, str | None]], int]:
    """The first failed requests of the batch (custom_id, input line, error) and how many
    failed in all."""
    where = (Request.batch_id == batch_id, Request.state == RequestState.FAILED)
    rows = [tuple(r) for r in session.execute(
        select(Request.custom_id, Request.line, Request.last_error).where(*where)
        .order_by(Request.id).limit(limit))]
    total = session.scalar(select(func.count()).select_from(Request).where(*where)) or 0
    return rows, int(total)  # type: ignore[return-value]


def _seconds_since(session: Session, column: Any, since: datetime) -> ColumnElement[Any]:
    """Seconds from ``since`` to ``column``, in the database's own date arithmetic."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(column) - func.julianday(since.isoformat(sep=" "))) * 86400.0
    return func.extract("epoch", column - since)


def tokens_over_time(session: Session, owner: str | None, since: datetime, width: timedelta,
                     buckets: int) -> list[int]:
    """Tokens generated in each of ``buckets`` spans of ``width`` from ``since`` (results
    by the time they were written), of one owner's batches or of all: one GROUP BY over
    the window's rows (read by the index on results.created_at)."""
    end = since + width * buckets
    slot = _seconds_since(session, Result.created_at, since) / width.total_seconds()
    # seconds are never negative here: a cast truncates as floor would (SQLite has no floor)
    index = func.floor(slot) if session.get_bind().dialect.name != "sqlite" else cast(
        slot, Integer)
    stmt = (select(index.label("slot"), func.sum(Result.completion_tokens))
            .where(Result.created_at >= since, Result.created_at < end).group_by("slot"))
    mine = _owned_by(owner)
    if mine is not None:
        stmt = (stmt.join(Request, Result.request_id == Request.id)
                .join(Batch, Batch.id == Request.batch_id).where(mine))
    out = [0] * buckets
    for i, n in session.execute(stmt):
        if 0 <= int(i) < buckets:
            out[int(i)] += int(n or 0)
    return out


def requests_waiting(session: Session, owner: str | None) -> dict[str, int]:
    """Queued and running requests (an index range: ended requests are not read)."""
    stmt = (select(Request.state, func.count())
            .where(Request.state.in_([RequestState.QUEUED, RequestState.RUNNING]))
            .group_by(Request.state))
    mine = _owned_by(owner)
    if mine is not None:
        stmt = stmt.join(Batch, Batch.id == Request.batch_id).where(mine)
    return {str(s): int(n) for s, n in session.execute(stmt)}


def run_page(session: Session, offset: int, limit: int) -> tuple[list[PipelineRun], int]:
    rows = list(session.execute(select(PipelineRun).order_by(PipelineRun.created_at.desc())
                                .offset(offset).limit(limit)).scalars())
    return rows, int(session.scalar(select(func.count()).select_from(PipelineRun)) or 0)


# --- sessions -------------------------------------------------------------------------------

def add_session(session: Session, token_sha256: str, key_id: str | None, csrf: str,
                now: datetime, expires_at: datetime) -> None:
    session.execute(delete(UiSession).where(UiSession.expires_at < now))  # the old ones go
    session.add(UiSession(id=token_sha256, key_id=key_id, csrf=csrf, created_at=now,
                          expires_at=expires_at))


def live_session(session: Session, token_sha256: str, now: datetime
                 ) -> tuple[UiSession, ApiKey | None] | None:
    """The session, unexpired, with its key if that key is still live (a revoked key's
    sessions end with it)."""
    row = session.execute(select(UiSession, ApiKey)
                          .outerjoin(ApiKey, ApiKey.id == UiSession.key_id)
                          .where(UiSession.id == token_sha256, UiSession.expires_at > now)
                          ).first()
    if row is None:
        return None
    ui_session, key = row
    if ui_session.key_id is not None and (key is None or key.revoked_at is not None):
        return None
    return ui_session, key


def drop_session(session: Session, token_sha256: str) -> None:
    session.execute(delete(UiSession).where(UiSession.id == token_sha256))


def key_by_hash(session: Session, key_sha256: str) -> ApiKey | None:
    return session.execute(select(ApiKey).where(ApiKey.key_sha256 == key_sha256,
                                                ApiKey.revoked_at.is_(None))).scalar()

