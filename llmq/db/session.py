"""Engines and sessions. SQLite gets WAL and a busy timeout so that a worker's writes and the
CLI's reads do not trip over each other."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from llmq.settings import get_settings, redact_url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we ship)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """One engine (and connection pool) per URL for the life of the process."""
    url = normalize_url(url or get_settings().database_url)
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = _create(url)
    return engine


def dispose_engines() -> None:
    while _engines:
        _engines.popitem()[1].dispose()


class DatabaseUrlError(ValueError):
    """LLMQ_DATABASE_URL is not a URL that SQLAlchemy can connect with."""


def _create(url: str) -> Engine:
    try:
        make_url(url).get_dialect()  # a port that is not a number fails here too
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(f"LLMQ_DATABASE_URL {redact_url(url)!r} is not a database URL "
                               f"({type(exc).__name__}: {redact_url(str(exc))})") from None
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
