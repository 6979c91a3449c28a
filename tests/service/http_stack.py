"""A real llmq deployment for the HTTP tests: `llmq serve` and `llmq worker` processes on
Redis and a SQL database, with two keys. Module-scoped: starting a worker costs seconds."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.private_servers import RedisServer, free_port

from .conftest import _pg_database
from .workers import LLMQ, Worker, llmq, llmq_json


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    key: str  # the first key, which the tests' batches belong to
    other_key: str
    worker: Worker
    server: subprocess.Popen[bytes]
    log: Path


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*LLMQ, "serve", "--port", str(port), "--log-level", "warning"],
                            env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"llmq serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"llmq serve did not answer:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'llmq.db'}"
    else:
        yield from _pg_database()


def run_stack(db_url: str, redis: RedisServer, folder: Path, model: str,
              **settings: str) -> Iterator[Stack]:
    redis.flush()
    env = {"LLMQ_DATABASE_URL": db_url, "LLMQ_BROKER_URL": redis.url, "LLMQ_MODEL": model,
           "LLMQ_FILES_DIR": str(folder / "files"), "LLMQ_MAX_TOKENS": "8",
           "LLMQ_HEARTBEAT_SECONDS": "1", "LLMQ_WORKER_TIMEOUT": "10",
           "LLMQ_REAPER_SECONDS": "1", **settings}
    llmq(env, "db", "upgrade")
    key = llmq_json(env, "keys", "create", "--name", "tests", "--json")["key"]
    other = llmq_json(env, "keys", "create", "--name", "someone else", "--json")["key"]
    worker = Worker(env, folder / "worker.log", "--slots", "8")
    Worker.started.remove(worker)  # this module's, not one test's: stopped below
    port = free_port()
    server = start_server(env, port, folder / "serve.log")
    try:
        worker.wait_ready()
        yield Stack(env, f"http://127.0.0.1:{port}", key, other, worker, server,
                    folder / "serve.log")
    finally:
        stop_server(server)
        worker.stop()
