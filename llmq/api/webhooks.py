"""Webhook endpoints as OpenAI's SDK manages them (``client.webhooks.create/retrieve/update/
list/delete/rotate_secret/test``), for the HTTP API and ``llmq webhooks``. A key sees only
its own endpoints; the CLI, which holds the database, sees every one (``EVERY_KEY``). The
secret is shown when an endpoint is made and when it is rotated, never again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from llmq.api.files import InvalidRequest, page, unix
from llmq.api.service import NotFound
from llmq.db import webhooks as rows
from llmq.db.keys import EVERY_KEY
from llmq.db.migrate import ensure_schema
from llmq.db.models import ApiKey, WebhookEndpoint, utcnow
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker.webhooks.send import RefusedUrl, new_secret, resolve

EVERY = EVERY_KEY
EVENT_TYPES = rows.EVENT_TYPES
KEEP_OLD_SECRET = timedelta(hours=24)  # OpenAI's keep_old_secret_active_for_24_hours


class DeliveryFailed(InvalidRequest):
    """A test event that reached no receiver."""


def hint(secret: str) -> str:
    return f"{secret[:6]}...{secret[-4:]}"


def endpoint_object(e: WebhookEndpoint, with_secret: bool = False) -> dict[str, Any]:
    """OpenAI's WebhookEndpoint (with its ``signing_secret`` when it is new), and llmq's
    ``owner`` and ``disabled_at``/``disabled_reason`` (a receiver that answered 410)."""
    obj: dict[str, Any] = {
        "id": e.id, "object": "webhook_endpoint", "created_at": unix(e.created_at),
        "updated_at": unix(e.updated_at), "name": e.name, "url": e.url,
        "event_types": list(e.event_types), "signing_secret_hint": hint(e.secret),
        "owner": e.owner, "disabled_at": unix(e.disabled_at),
        "disabled_reason": e.disabled_reason}
    if with_secret:
        obj["signing_secret"] = e.secret
    return obj


def check_events(event_types: list[str]) -> list[str]:
    unknown = [t for t in event_types if t not in rows.EVENT_TYPES]
    if unknown or not event_types:
        raise InvalidRequest(
            f"event_types {unknown or '[]'}: llmq sends {', '.join(rows.EVENT_TYPES)}",
            "event_types")
    return list(dict.fromkeys(event_types))


def check_url(url: str) -> str:
    """Refused when not http(s) or when it resolves to a private address (checked again at
    each delivery: a name can resolve elsewhere later)."""
    try:
        resolve(url, get_settings().webhooks_allow_private)
    except RefusedUrl as exc:
        raise InvalidRequest(str(exc), "url") from None
    return url


def _owned(session: Any, endpoint_id: str, owner: str | None) -> WebhookEndpoint:
    endpoint = rows.owned_endpoint(session, endpoint_id, owner)
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: {endpoint_id}")
    return endpoint


def create_endpoint(owner: str | None, *, url: str, event_types: list[str],
                    name: str | None = None) -> dict[str, Any]:
    """A new endpoint of ``owner`` (a key's id; None: the keyless owner), with its secret."""
    ensure_schema()
    events = check_events(event_types)
    check_url(url)
    with session_scope() as session:
        if owner is not None and session.get(ApiKey, owner) is None:
            raise NotFound(f"no key {owner!r}")
        endpoint = rows.add_endpoint(session, owner=owner, url=url, event_types=events,
                                     name=name or urlsplit(url).hostname or url,
                                     secret=new_secret())
        return endpoint_object(endpoint, with_secret=True)


def list_endpoints(owner: str | None, after: str | None = None, limit: int = 20
                   ) -> dict[str, Any]:
    ensure_schema()
    with session_scope() as session:
        found = rows.list_endpoints(session, owner, after, limit + 1)
        return page([endpoint_object(e) for e in found], limit)


def get_endpoint(owner: str | None, endpoint_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return endpoint_object(_owned(session, endpoint_id, owner))


def update_endpoint(owner: str | None, endpoint_id: str, *, url: str | None = None,
                    event_types: list[str] | None = None, name: str | None = None
                    ) -> dict[str, Any]:
    """Changes what is given; an endpoint disabled by a 410 is enabled again (an update is
    the owner saying the receiver is back)."""
    events = None if event_types is None else check_events(event_types)
    if url is not None:
        check_url(url)
    with session_scope() as session:
        endpoint = _owned(session, endpoint_id, owner)
        changes = {k: v for k, v in (("url", url), ("event_types", events), ("name", name))
                   if v is not None and v != getattr(endpoint, k)}
        for key, value in changes.items():
            setattr(endpoint, key, value)
        if changes or endpoint.disabled_at is not None:
            endpoint.updated_at = utcnow()
            endpoint.disabled_at = endpoint.disabled_reason = None
        session.flush()
        return endpoint_object(endpoint)


def delete_endpoint(owner: str | None, endpoint_id: str) -> dict[str, Any]:
    """Deletes it with its deliveries (those pending are never sent)."""
    with session_scope() as session:
        session.delete(_owned(session, endpoint_id, owner))
    return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}


def rotate_secret(owner: str | None, endpoint_id: str, keep_old: bool = False
                  ) -> dict[str, Any]:
    """A new secret; with ``keep_old``, deliveries are signed with both for 24 hours (a
    receiver that verifies with either accepts them while it is being updated)."""
    with session_scope() as session:
        endpoint = _owned(session, endpoint_id, owner)
        now = utcnow()
        endpoint.previous_secret = endpoint.secret if keep_old else None
        endpoint.previous_secret_until = now + KEEP_OLD_SECRET if keep_old else None
        endpoint.secret, endpoint.updated_at = new_secret(), now
        session.flush()
        return endpoint_object(endpoint, with_secret=True)


def test_endpoint(owner: str | None, endpoint_id: str,
                  event_type: str = "batch.completed") -> dict[str, Any]:
    """Sends one event of ``event_type`` about a made-up subject now, once, and says how the
    receiver answered (recorded among the deliveries)."""
    from llmq.worker.webhooks.deliver import attempt

    check_events([event_type])
    with session_scope() as session:
        endpoint = _owned(session, endpoint_id, owner)
        subject = ("run_test_" if event_type.startswith("pipeline_run") else "batch_test_"
                   ) + rows.new_id("")[:12]
        event_id = rows.add_event(session, event_type, subject, [endpoint], [],
                                  state=rows.SENDING).id
        delivery = rows.deliveries_of(session, event_id)[0]
    attempt(delivery, get_settings(), final=True)
    with session_scope() as session:
        status, error = rows.delivery_outcome(session, delivery)
    if status is None:
        raise DeliveryFailed(f"test event {event_id} reached no receiver: {error}", "url")
    return {"object": "webhook_endpoint.test", "event_type": event_type,
            "status_code": status, "success": True, "webhook_endpoint_id": endpoint_id,
            "event_id": event_id}


def deliveries(owner: str | None, endpoint_id: str | None = None, limit: int = 20
               ) -> list[dict[str, Any]]:
    """The newest deliveries, each with every attempt."""
    ensure_schema()
    with session_scope() as session:
        if endpoint_id is not None:
            _owned(session, endpoint_id, owner)
        return [{
            "id": d.id, "event_id": e.id, "event_type": e.type, "subject": e.subject,
            "endpoint_id": d.endpoint_id, "url": d.url, "state": d.state,
            "attempts": [{"number": a.number, "at": unix(a.started_at),
                          "status_code": a.status_code, "error": a.error,
                          "duration_ms": round(a.duration_ms, 1)} for a in tries],
            "created_at": unix(d.created_at), "delivered_at": unix(d.delivered_at),
            "next_attempt_at": unix(d.next_attempt_at) if d.state == rows.PENDING else None,
        } for d, e, tries in rows.deliveries(session, owner, endpoint_id, limit)]
