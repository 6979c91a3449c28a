"""Real services for the service tests: a private redis-server on a free port, a fresh
PostgreSQL database per test (dropped afterwards) or a SQLite file, and settings pointed at
them through the environment, as a user would."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from llmq.db.session import dispose_engines
from llmq.settings import get_settings
from tests.conftest import Tiny

PG_ADMIN_URL = os.environ.get("LLMQ_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own; tests may kill and restart it."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly  # every write logged and replayed at start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs nothing system-wide;"
                        " .ci/run does)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


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
    name = f"llmq_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
