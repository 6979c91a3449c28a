"""Servers of a test's or a benchmark's own, never the machine's shared ones: a redis-server
on a free port, a scratch database on the shared PostgreSQL (created, then dropped), and a
PostgreSQL cluster of its own (initdb and pg_ctl on a private folder and port) that may be
stopped and started. Shared by tests/ and bench/."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

# where scratch databases are created: the machine's PostgreSQL, as its superuser
PG_ADMIN_URL = os.environ.get("LLMQ_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


class ServerMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on a port it keeps, so it can be killed and started again
    (empty without ``appendonly``; with it, every write is logged and replayed at start)."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing("redis-server is not installed (make test installs nothing "
                                "system-wide; .ci/run does)")
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
        """kill -9, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server for the block; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="llmq-redis-") as folder:
        server = RedisServer(Path(folder))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@contextmanager
def scratch_postgres(before_drop: Callable[[], None] | None = None) -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for the block, dropped afterwards (its
    connections cut); yields its URL. ``before_drop`` closes the caller's own pools first."""
    name = f"llmq_scratch_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        if before_drop is not None:
            before_drop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ServerMissing(f"PostgreSQL's {name} is not installed")
    return found


class PrivateCluster:
    """A PostgreSQL cluster of our own, which may be stopped as a crash would stop it."""

    def __init__(self) -> None:
        # initdb refuses to run as root: the cluster then belongs to the postgres user, in a
        # folder of its own that it can reach (pytest's folders are root's alone)
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="llmq-pg-"))
        if self._as:
            shutil.chown(self.folder, "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self._run(postgres_binary("initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/llmq"

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        """As a crash or a failover would: no checkpoint, connections cut."""
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                  "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self) -> None:
        self._run(postgres_binary("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "-c", "CREATE DATABASE llmq")
