"""API keys of the HTTP API: created once and shown once, stored as a hash, revoked by id."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from llmq.api.service import NotFound
from llmq.db import keys as key_rows
from llmq.db.migrate import ensure_schema
from llmq.db.models import utcnow
from llmq.db.session import session_scope

KEY_PREFIX = "llmq-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(name: str, admin: bool = False) -> dict[str, Any]:
    """A new key: ``{"id", "name", "admin", "key"}``; the key cannot be read again. An
    admin key sees every key's work and the workers on the status page."""
    ensure_schema()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    with session_scope() as session:
        key_rows.add_key(session, key_id, name, key_hash(key), admin)
    return {"id": key_id, "name": name, "admin": admin, "key": key}


def list_keys() -> list[dict[str, Any]]:
    ensure_schema()
    with session_scope() as session:
        return [{"id": k.id, "name": k.name, "admin": k.admin,
                 "created_at": k.created_at.isoformat() + "Z",
                 "revoked_at": k.revoked_at.isoformat() + "Z" if k.revoked_at else None}
                for k in key_rows.list_keys(session)]


def revoke_key(key_id: str) -> None:
    with session_scope() as session:
        if not key_rows.revoke(session, key_id):
            raise NotFound(f"no key {key_id!r}")


def authenticate(key: str) -> str | None:
    """The id of the live key ``key``, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    with session_scope() as session:
        return key_rows.live_key_id(session, key_hash(key))


def usage(days: int, owner: str | None = key_rows.EVERY_KEY) -> list[dict[str, Any]]:
    """Tokens per key and UTC day over the last ``days`` days (today included), newest
    first: ``{"date", "key_id", "requests", "input_tokens", "cached_tokens",
    "output_tokens", "total_tokens"}``."""
    ensure_schema()
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    with session_scope() as session:
        rows = key_rows.usage_by_day(session, today - timedelta(days=days - 1), owner)
    out = []
    for row in rows:
        item = asdict(row)
        item["date"] = item.pop("day")
        item["total_tokens"] = row.input_tokens + row.output_tokens
        out.append(item)
    return out
