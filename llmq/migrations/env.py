"""Alembic environment: the URL comes from llmq's settings unless the caller set one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from llmq.db.models import Base
from llmq.db.session import get_engine, normalize_url
from llmq.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalize_url(config.get_main_option("sqlalchemy.url") or get_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = get_engine(_url())
        with engine.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


_ = pool  # alembic's template imports it; kept for offline-mode tooling
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
