"""The fault tests use the service tests' real servers: a private redis-server, and a fresh
PostgreSQL database per test or a SQLite file."""

from tests.service.conftest import db_url, llmq_env, redis_server  # noqa: F401
