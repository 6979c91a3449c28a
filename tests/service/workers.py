"""Real ``llmq`` processes for the tests: workers we start and may kill, CLI runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import text

from llmq.db.session import get_engine

LLMQ = [sys.executable, "-m", "llmq"]


class Worker:
    started: ClassVar[list[Worker]] = []  # killed after each test by the kill_leftovers fixture

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "LLMQ_THREADS": "1"}
        self.proc = subprocess.Popen(
            [*LLMQ, "worker", "--device", "cpu", "--loglevel", "INFO", *args],
            env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        Worker.started.append(self)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if " ready." in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def llmq(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*LLMQ, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"llmq {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def llmq_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(llmq(env, *args).stdout)


def wait_finished(env: dict[str, str], batch_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = llmq_json(env, "status", batch_id, "--json")
        if info["state"] in ("completed", "cancelled"):
            return info
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} did not finish: {info}")


def count_rows(sql: str, **params: Any) -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())
