"""Schema upgrades through Alembic, the only way the schema changes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from llmq.db.session import get_engine, normalize_url
from llmq.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url or get_settings().database_url))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str | None = None) -> str | None:
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(url: str | None = None) -> None:
    """Brings an embedded SQLite database up to date by itself; a server database must be
    upgraded on purpose (``llmq db upgrade``), so this only checks it."""
    url = normalize_url(url or get_settings().database_url)
    if current_revision(url) == head_revision():
        return
    if url.startswith("sqlite"):
        upgrade(url)
        return
    raise SchemaOutOfDate(
        "the database schema is not up to date: run `llmq db upgrade` first")


class SchemaOutOfDate(RuntimeError):
    pass
