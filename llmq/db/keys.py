"""API keys: rows of names and hashes; the key itself is never stored."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import ApiKey, utcnow


def add_key(session: Session, key_id: str, name: str, key_sha256: str) -> ApiKey:
    key = ApiKey(id=key_id, name=name, key_sha256=key_sha256, created_at=utcnow())
    session.add(key)
    session.flush()
    return key


def live_key_id(session: Session, key_sha256: str) -> str | None:
    """The id of the unrevoked key with this hash, if any."""
    return session.execute(select(ApiKey.id).where(
        ApiKey.key_sha256 == key_sha256, ApiKey.revoked_at.is_(None))).scalar_one_or_none()


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())


def revoke(session: Session, key_id: str) -> bool:
    """Revokes the key; False if there is no such key (revoking twice is no error)."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    return True
