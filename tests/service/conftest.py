"""Real services for the service tests: a private redis-server on a free port, a fresh
PostgreSQL database per test (dropped afterwards) or a SQLite file, and settings pointed at
them through the environment, as a user would (the servers: tests/private_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.db.session import dispose_engines
from llmq.settings import get_settings
from tests.conftest import Tiny
from tests.private_servers import RedisServer, scratch_postgres


@pytest.fixture(autouse=True)
def kill_leftover_workers() -> Iterator[None]:
    """A test that fails half-way must not leave its workers running."""
    from .workers import Worker

    yield
    while Worker.started:
        Worker.started.pop().kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _pg_database() -> Iterator[str]:
    with scratch_postgres(before_drop=dispose_engines) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmq.db'}"
    else:
        yield from _pg_database()


@pytest.fixture
def llmq_env(monkeypatch: pytest.MonkeyPatch, db_url: str,
             redis_server: RedisServer) -> Iterator[dict[str, str]]:
    """Settings for this test, in the environment (subprocesses inherit them)."""
    redis_server.flush()
    env = {"LLMQ_DATABASE_URL": db_url, "LLMQ_BROKER_URL": redis_server.url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    dispose_engines()
    yield env
    get_settings.cache_clear()
    dispose_engines()


@pytest.fixture
def embedded_env(tmp_path: Path, tiny: Tiny) -> dict[str, str]:
    # no broker at all: the embedded default must not need one
    return {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}",
            "LLMQ_BROKER_URL": "redis://127.0.0.1:1/0", "LLMQ_MODEL": str(tiny.gguf),
            "LLMQ_THREADS": "1"}
