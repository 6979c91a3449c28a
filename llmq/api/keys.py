"""API keys of the HTTP API: created once and shown once, stored as a hash, revoked by id."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from llmq.api.service import NotFound
from llmq.db import keys as key_rows
from llmq.db.migrate import ensure_schema
from llmq.db.session import session_scope

KEY_PREFIX = "llmq-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(name: str) -> dict[str, Any]:
    """A new key: ``{"id", "name", "key"}``; the key cannot be read again."""
    ensure_schema()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    with session_scope() as session:
        key_rows.add_key(session, key_id, name, key_hash(key))
    return {"id": key_id, "name": name, "key": key}


def list_keys() -> list[dict[str, Any]]:
    ensure_schema()
    with session_scope() as session:
        return [{"id": k.id, "name": k.name, "created_at": k.created_at.isoformat() + "Z",
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
