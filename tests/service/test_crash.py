"""A worker killed with SIGKILL in the middle of a batch loses nothing: its messages come
back after the visibility timeout and another worker finishes them, each request once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmq.api import service
from llmq.db.migrate import upgrade
from tests.conftest import Tiny

from .test_end_to_end import prompts_file, wait_done
from .workers import Worker, count_rows, llmq_json


@pytest.fixture
def env(llmq_env: dict[str, str], tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> dict:
    fast = {"LLMQ_MODEL": str(tiny.gguf), "LLMQ_VISIBILITY_TIMEOUT": "8",
            "LLMQ_TASK_TIME_LIMIT": "6"}
    for k, v in fast.items():
        monkeypatch.setenv(k, v)
    upgrade()
    return {**llmq_env, **fast}


def test_kill_9_mid_batch_then_another_worker_finishes(env: dict, tmp_path: Path) -> None:
    report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 120, "r",
                                                       max_tokens=48)), "--json")
    batch = report["batch_id"]
    first = Worker(env, tmp_path / "w1.log", "--slots", "4", "--concurrency", "2")
    first.wait_ready()
    deadline = time.time() + 60
    while service.status(batch)["counts"]["succeeded"] < 10 and time.time() < deadline:
        time.sleep(0.1)
    first.kill()
    before = service.status(batch)["counts"]
    assert 0 < before["succeeded"] < 120 and before["running"] > 0  # killed mid-flight
    second = Worker(env, tmp_path / "w2.log", "--slots", "4", "--concurrency", "2")
    try:
        second.wait_ready()
        info = wait_done(batch, timeout=180)
    finally:
        second.stop()
    assert info["counts"]["succeeded"] == 120 and info["counts"]["failed"] == 0
    assert count_rows("SELECT count(*) FROM results") == 120
    assert count_rows("SELECT count(DISTINCT request_id) FROM results") == 120
    # the requests that were running when the first worker died ran twice
    assert count_rows("SELECT count(*) FROM requests WHERE attempts = 2") >= before["running"]
