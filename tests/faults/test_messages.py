"""Messages the workers cannot trust: a pickled one, and the same requests sent twice to two
workers at once. Neither may cost a request its one result."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from llmq.db.migrate import upgrade
from llmq.db.session import get_engine
from llmq.worker.celery_app import TASK_RUN_REQUESTS, producer_app, request_queue
from llmq.worker.dispatch import enqueue_requests
from tests.conftest import Tiny
from tests.service.test_end_to_end import prompts_file, wait_done
from tests.service.workers import Worker, count_rows, llmq_json

from .invariants import assert_every_request_ended_once


@pytest.fixture
def env(llmq_env: dict[str, str], tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("LLMQ_MODEL", str(tiny.gguf))
    upgrade()
    return {**llmq_env, "LLMQ_MODEL": str(tiny.gguf)}


def test_a_pickled_message_is_refused_and_the_worker_lives(env: dict, tmp_path: Path) -> None:
    queue = request_queue("any", env["LLMQ_MODEL"])
    # what an attacker with access to Redis would push: pickle runs code when loaded
    producer_app().send_task(TASK_RUN_REQUESTS, args=[[1, 2, 3]], queue=queue,
                             serializer="pickle")
    worker = Worker(env, tmp_path / "w.log", "--slots", "4")
    try:
        worker.wait_ready()
        report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 8, "p")),
                           "--json")
        info = wait_done(report["batch_id"], timeout=120)
    finally:
        worker.stop()
    assert info["counts"]["succeeded"] == 8
    log = (tmp_path / "w.log").read_text()
    assert "ContentDisallowed" in log or "Refusing to deserialize" in log
    assert_every_request_ended_once()


def test_two_workers_and_every_message_sent_twice_one_run_each(env: dict,
                                                                tmp_path: Path) -> None:
    path = prompts_file(tmp_path / "p.jsonl", 64, "r", max_tokens=12)
    workers = [Worker(env, tmp_path / f"w{i}.log", "--slots", "4", "--concurrency", "2")
               for i in range(2)]
    try:
        # both listening first: a worker ready a second before the other ran all 64 of the
        # tiny model's requests alone in half a second, and the test saw one worker only
        for w in workers:
            w.wait_ready()
        report = llmq_json(env, "submit", str(path), "--json")
        batch = report["batch_id"]
        enqueue_requests(request_ids(batch), env["LLMQ_MODEL"], "any", "normal",
                         chunk_size=5)
        info = wait_done(batch, timeout=180)
    finally:
        for w in workers:
            w.stop()
    assert info["counts"]["succeeded"] == 64
    assert_every_request_ended_once()
    assert count_rows("SELECT count(*) FROM requests WHERE attempts <> 1") == 0  # none twice
    assert count_rows("SELECT count(DISTINCT worker_pid) FROM results") == 2  # both served


def request_ids(batch: str) -> list[int]:
    with get_engine().connect() as conn:
        return list(conn.execute(text("SELECT id FROM requests WHERE batch_id = :b ORDER BY id"),
                                 {"b": batch}).scalars())
