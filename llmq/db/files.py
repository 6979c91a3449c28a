"""Rows of the Files API. A key sees only its own files: every lookup takes the owner (None:
the anonymous owner of open mode and of nothing else)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from .models import StoredFile, utcnow


def owned(column: InstrumentedAttribute[Any], owner: str | None) -> ColumnElement[bool]:
    """``column`` belongs to ``owner`` (NULL for the anonymous owner)."""
    return column.is_(None) if owner is None else column == owner


def add_file(session: Session, **fields: Any) -> StoredFile:
    row = StoredFile(**{"created_at": utcnow(), **fields})
    session.add(row)
    session.flush()
    return row


def add_file_once(session: Session, **fields: Any) -> None:
    """Adds the row unless one with its id exists (two finalizers of one batch)."""
    if session.get(StoredFile, fields["id"]) is not None:
        return
    try:
        with session.begin_nested():
            add_file(session, **fields)
    except IntegrityError:
        pass


def _live() -> ColumnElement[bool]:
    """Not expired (the sweep deletes expired files; until it does, they are gone to readers)."""
    return StoredFile.expires_at.is_(None) | (StoredFile.expires_at > utcnow())


def get_file(session: Session, file_id: str, owner: str | None) -> StoredFile | None:
    return session.execute(select(StoredFile).where(
        StoredFile.id == file_id, owned(StoredFile.owner, owner), _live())).scalar_one_or_none()


def expired(session: Session, limit: int) -> list[StoredFile]:
    """Up to ``limit`` files past their expiry, oldest expiry first."""
    return list(session.execute(select(StoredFile).where(StoredFile.expires_at <= utcnow())
                                .order_by(StoredFile.expires_at).limit(limit)).scalars())


def delete_rows(session: Session, file_ids: list[str]) -> None:
    session.execute(delete(StoredFile).where(StoredFile.id.in_(file_ids)))


def list_files(session: Session, owner: str | None, *, purpose: str | None = None,
               after: str | None = None, limit: int = 20, newest_first: bool = True
               ) -> list[StoredFile]:
    """A page of the owner's files, ``after`` the file of that id (a cursor)."""
    order = (StoredFile.created_at.desc(), StoredFile.id.desc()) if newest_first else (
        StoredFile.created_at, StoredFile.id)
    stmt = select(StoredFile).where(owned(StoredFile.owner, owner), _live())
    if purpose:
        stmt = stmt.where(StoredFile.purpose == purpose)
    if after:
        cursor = get_file(session, after, owner)
        if cursor is not None:
            key = (cursor.created_at, cursor.id)
            older = (StoredFile.created_at < key[0]) | (
                (StoredFile.created_at == key[0]) & (StoredFile.id < key[1]))
            newer = (StoredFile.created_at > key[0]) | (
                (StoredFile.created_at == key[0]) & (StoredFile.id > key[1]))
            stmt = stmt.where(older if newest_first else newer)
    return list(session.execute(stmt.order_by(*order).limit(limit)).scalars())


def delete_file(session: Session, file_id: str, owner: str | None) -> StoredFile | None:
    row = get_file(session, file_id, owner)
    if row is not None:
        session.execute(delete(StoredFile).where(StoredFile.id == file_id))
    return row
