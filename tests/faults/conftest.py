"""The fault tests use the service tests' real servers: a private redis-server, and a fresh
PostgreSQL database per test or a SQLite file."""

from tests.service.conftest import (  # noqa: F401
    db_url,
    kill_leftover_workers,
    llmq_env,
    redis_server,
)
