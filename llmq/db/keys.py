"""API keys: rows of names and hashes; the key itself is never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .files import owned
from .models import ApiKey, Batch, Request, Result, utcnow

EVERY_KEY = "*"  # usage_by_day's owner for all keys (None is the keyless owner)


def add_key(session: Session, key_id: str, name: str, key_sha256: str,
            admin: bool = False) -> ApiKey:
    key = ApiKey(id=key_id, name=name, key_sha256=key_sha256, created_at=utcnow(),
                 admin=admin)
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


@dataclass
class DayUsage:
    day: str  # YYYY-MM-DD, UTC
    key_id: str | None  # None: batches made without a key (the CLI, open mode)
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int


def usage_by_day(session: Session, since: datetime,
                 owner: str | None = EVERY_KEY) -> list[DayUsage]:
    """Tokens of the results written since ``since``, summed per key and UTC day (the day
    each result was written), newest day first."""
    day = func.date(Result.created_at)
    query = (select(day, Batch.owner, func.count(), func.sum(Result.prompt_tokens),
                    func.sum(Result.cached_tokens), func.sum(Result.completion_tokens))
             .select_from(Result).join(Request, Result.request_id == Request.id)
             .join(Batch, Request.batch_id == Batch.id)
             .where(Result.created_at >= since))
    if owner != EVERY_KEY:
        query = query.where(owned(Batch.owner, owner))
    rows = session.execute(query.group_by(day, Batch.owner)
                           .order_by(day.desc(), Batch.owner)).all()
    return [DayUsage(str(d), k, int(n), int(p or 0), int(c or 0), int(o or 0))
            for d, k, n, p, c, o in rows]
