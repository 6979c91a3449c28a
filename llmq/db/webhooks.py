"""Rows of webhooks: endpoints, the events of batches and pipeline runs that ended, their
deliveries and every attempt. A batch's end is announced once (``announced_at``, set by a
compare-and-set, so two workers' sweeps cannot both announce it), and a delivery is sent by
one sender at a time (a lease in ``claimed_until``, so a sender that dies mid-send leaves it
due again: at least once)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from .files import owned
from .keys import EVERY_KEY
from .models import (
    Batch,
    DocumentState,
    PipelineRun,
    Request,
    RequestState,
    RunDocument,
    RunState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)

BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
# llmq's own, in OpenAI's shape
RUN_EVENTS = ("pipeline_run.completed", "pipeline_run.failed")
EVENT_TYPES = BATCH_EVENTS + RUN_EVENTS

PENDING, SENDING, DELIVERED, FAILED, DISABLED = (
    "pending", "sending", "delivered", "failed", "disabled")


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- endpoints ------------------------------------------------------------------------------

def add_endpoint(session: Session, **fields: Any) -> WebhookEndpoint:
    now = utcnow()
    row = WebhookEndpoint(id=new_id("whep_"), created_at=now, updated_at=now, **fields)
    session.add(row)
    session.flush()
    return row


def owned_endpoint(session: Session, endpoint_id: str, owner: str | None
                   ) -> WebhookEndpoint | None:
    """The endpoint if ``owner`` may see it (``EVERY_KEY``: anyone's, for the CLI)."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if owner != EVERY_KEY:
        stmt = stmt.where(owned(WebhookEndpoint.owner, owner))
    return session.execute(stmt).scalar_one_or_none()


def list_endpoints(session: Session, owner: str | None, after: str | None = None,
                   limit: int = 20) -> list[WebhookEndpoint]:
    """Newest first, ``after`` the endpoint of that id (OpenAI's cursor)."""
    stmt = select(WebhookEndpoint)
    if owner != EVERY_KEY:
        stmt = stmt.where(owned(WebhookEndpoint.owner, owner))
    cursor = owned_endpoint(session, after, owner) if after else None
    if cursor is not None:
        stmt = stmt.where((WebhookEndpoint.created_at < cursor.created_at) | (
            (WebhookEndpoint.created_at == cursor.created_at)
            & (WebhookEndpoint.id < cursor.id)))
    return list(session.execute(stmt.order_by(WebhookEndpoint.created_at.desc(),
                                              WebhookEndpoint.id.desc()).limit(limit)).scalars())


def disable_endpoint(session: Session, endpoint_id: str, reason: str) -> None:
    """Its receiver is gone (410): no more deliveries, those pending included."""
    now = utcnow()
    session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
                    .values(disabled_at=now, disabled_reason=reason))
    session.execute(update(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id,
                                                  WebhookDelivery.state == PENDING)
                    .values(state=DISABLED, last_error=reason))


# --- events ---------------------------------------------------------------------------------

def event_body(event_id: str, type: str, created_at: datetime, subject: str) -> str:
    """OpenAI's thin payload: receivers read the object itself for the rest."""
    return json.dumps({"id": event_id, "object": "event", "type": type,
                       "created_at": int(created_at.replace(tzinfo=UTC).timestamp()),
                       "data": {"id": subject}}, separators=(",", ":"))


def add_event(session: Session, type: str, subject: str, endpoints: list[WebhookEndpoint],
              urls: list[str], state: str = PENDING) -> WebhookEvent:
    """The event and a delivery to each endpoint and URL, due now (``state`` SENDING: sent
    by the caller itself, never by the workers)."""
    now = utcnow()
    event_id = new_id("evt_")
    event = WebhookEvent(id=event_id, type=type, subject=subject, created_at=now,
                         body=event_body(event_id, type, now, subject))
    session.add(event)
    session.flush()
    for endpoint in endpoints:
        session.add(WebhookDelivery(event_id=event_id, endpoint_id=endpoint.id,
                                    url=endpoint.url, state=state, next_attempt_at=now,
                                    created_at=now))
    for url in urls:
        session.add(WebhookDelivery(event_id=event_id, url=url, state=state,
                                    next_attempt_at=now, created_at=now))
    session.flush()
    return event


def subscribers(session: Session, owner: str | None, type: str) -> list[WebhookEndpoint]:
    return [e for e in session.execute(select(WebhookEndpoint).where(
        owned(WebhookEndpoint.owner, owner), WebhookEndpoint.disabled_at.is_(None))).scalars()
        if type in e.event_types]


def batch_end(batch: Batch) -> str:
    """Its event, with the precedence of OpenAI's status (failed, expired, cancelled)."""
    if batch.failed_at is not None:
        return "batch.failed"
    if batch.expired_at is not None:
        return "batch.expired"
    if batch.cancelled_at is not None:
        return "batch.cancelled"
    return "batch.completed"


def ended_batches(session: Session, limit: int = 100) -> list[Batch]:
    """Batches of files (HTTP or CLI; not single completions, not a pipeline's) whose every
    line is stored and whose every request has ended, not yet announced."""
    unfinished = exists(select(Request.id).where(
        Request.batch_id == Batch.id,
        Request.state.in_((RequestState.QUEUED, RequestState.RUNNING))))
    return list(session.execute(select(Batch).where(
        Batch.announced_at.is_(None), Batch.validated_at.is_not(None),
        or_(Batch.input_file_id.is_not(None), Batch.source_file.is_not(None)), ~unfinished)
        .order_by(Batch.created_at).limit(limit)).scalars())


def ended_runs(session: Session, limit: int = 100) -> list[tuple[str, bool]]:
    """(id, whether a document failed) of completed pipeline runs not yet announced."""
    failed = exists(select(RunDocument.id).where(RunDocument.run_id == PipelineRun.id,
                                                 RunDocument.state == DocumentState.FAILED))
    return [(run_id, bool(bad)) for run_id, bad in session.execute(
        select(PipelineRun.id, failed).where(PipelineRun.announced_at.is_(None),
                                             PipelineRun.state == RunState.COMPLETED)
        .order_by(PipelineRun.created_at).limit(limit))]


def claim_announcement(session: Session, table: type[Batch] | type[PipelineRun],
                       subject: str) -> bool:
    """Marks the end announced; False when another sweep did first."""
    return bool(session.execute(update(table).where(
        table.id == subject, table.announced_at.is_(None)).values(announced_at=utcnow())
    ).rowcount)


# --- deliveries -----------------------------------------------------------------------------

def due(session: Session, limit: int, now: datetime | None = None) -> list[int]:
    now = now or utcnow()
    return list(session.execute(select(WebhookDelivery.id).where(
        WebhookDelivery.state == PENDING, WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)).scalars())


def claim(session: Session, delivery_id: int, lease: timedelta) -> bool:
    """Takes the delivery for ``lease``; False when another sender has it."""
    now = utcnow()
    return bool(session.execute(update(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.state == PENDING,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .values(claimed_until=now + lease)).rowcount)


@dataclass
class Target:
    """What one attempt sends, and where."""

    delivery_id: int
    event_id: str
    body: str
    url: str
    secrets: list[str]  # the current one first; a rotated one while it is still valid
    endpoint_id: str | None
    attempts: int
    state: str


def target(session: Session, delivery_id: int, notify_secret: str | None) -> Target | None:
    """None when the delivery or its endpoint is gone, or its endpoint is disabled."""
    found = session.execute(select(WebhookDelivery, WebhookEvent, WebhookEndpoint)
                            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                            .outerjoin(WebhookEndpoint,
                                       WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                            .where(WebhookDelivery.id == delivery_id)).one_or_none()
    if found is None:
        return None
    delivery, event, endpoint = found
    if endpoint is None:
        if delivery.endpoint_id is not None:
            return None
        keys = [notify_secret] if notify_secret else []
        url = delivery.url
    else:
        if endpoint.disabled_at is not None:
            return None
        keys = [endpoint.secret]
        if endpoint.previous_secret and (endpoint.previous_secret_until or utcnow()) > utcnow():
            keys.append(endpoint.previous_secret)
        url = endpoint.url
    return Target(delivery.id, event.id, event.body, url, keys, delivery.endpoint_id,
                  delivery.attempts, delivery.state)


def record_attempt(session: Session, delivery_id: int, number: int, started_at: datetime,
                   status_code: int | None, error: str | None, duration_ms: float,
                   state: str, next_attempt_at: datetime | None) -> None:
    """The attempt, and where the delivery stands after it (its lease released)."""
    session.add(WebhookAttempt(delivery_id=delivery_id, number=number, started_at=started_at,
                               status_code=status_code, error=error, duration_ms=duration_ms))
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
        attempts=number, state=state, next_attempt_at=next_attempt_at, claimed_until=None,
        last_status=status_code, last_error=error,
        delivered_at=utcnow() if state == DELIVERED else None))


def deliveries_of(session: Session, event_id: str) -> list[int]:
    return list(session.execute(select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == event_id).order_by(WebhookDelivery.id)).scalars())


def delivery_outcome(session: Session, delivery_id: int) -> tuple[int | None, str | None]:
    """The last attempt's status code and error."""
    d = session.get(WebhookDelivery, delivery_id)
    return (d.last_status, d.last_error) if d is not None else (None, "deleted")


def give_up(session: Session, delivery_id: int, state: str, reason: str) -> None:
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                    .values(state=state, last_error=reason, claimed_until=None))


def deliveries(session: Session, owner: str | None, endpoint_id: str | None = None,
               limit: int = 20) -> list[tuple[WebhookDelivery, WebhookEvent,
                                              list[WebhookAttempt]]]:
    """The newest deliveries (to ``owner``'s endpoints; ``EVERY_KEY``: every one, notify
    URLs too), each with its event and attempts."""
    stmt = (select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id))
    if owner != EVERY_KEY:
        stmt = stmt.where(WebhookDelivery.endpoint_id.is_not(None),
                          owned(WebhookEndpoint.owner, owner))
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    found = list(session.execute(stmt.order_by(WebhookDelivery.id.desc()).limit(limit)))
    attempts: dict[int, list[WebhookAttempt]] = {d.id: [] for d, _ in found}
    if attempts:
        for a in session.execute(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(list(attempts))).order_by(WebhookAttempt.id)
        ).scalars():
            attempts[a.delivery_id].append(a)
    return [(d, e, attempts[d.id]) for d, e in found]


def delete_events_before(session: Session, cutoff: datetime, limit: int = 500) -> int:
    """Deletes up to ``limit`` events older than ``cutoff`` whose deliveries have all ended,
    with those deliveries and their attempts; returns how many events. (A test event's
    delivery still SENDING that old was abandoned by its process.)"""
    open_delivery = exists(select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.id, WebhookDelivery.state == PENDING))
    ids = list(session.execute(select(WebhookEvent.id).where(
        WebhookEvent.created_at < cutoff, ~open_delivery).limit(limit)).scalars())
    if not ids:
        return 0
    deliveries_of = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries_of)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(ids)))
    session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)))
    return len(ids)
