"""Losing a worker or the broker's messages strands nothing: heartbeats, the reaper and the
reconciler bring every accepted request to an end, with exactly one result each. Default
settings, except the liveness intervals (seconds here, not a minute)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from llmq.api import service
from tests.private_servers import RedisServer
from tests.service.test_end_to_end import prompts_file, wait_done
from tests.service.workers import Worker, count_rows, llmq_json

from .invariants import assert_every_request_ended_once


def _wait_for(predicate, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def test_kill_9_mid_batch_then_another_worker_finishes(env: dict, tmp_path: Path) -> None:
    """The visibility timeout stays at its default (two hours): the reaper, not Redis,
    hands the dead worker's requests to the new one."""
    report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 120, "r",
                                                       max_tokens=48)), "--json")
    batch = report["batch_id"]
    first = Worker(env, tmp_path / "w1.log", "--slots", "4", "--concurrency", "2")
    first.wait_ready()
    _wait_for(lambda: service.status(batch)["counts"]["succeeded"] >= 10)
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
    assert_every_request_ended_once()
    # the requests that were running when the first worker died ran twice
    assert count_rows("SELECT count(*) FROM requests WHERE attempts = 2") >= before["running"]
    assert "handed back to the queue" in (tmp_path / "w2.log").read_text()


def test_flushall_mid_batch_the_reconciler_resends(env: dict, tmp_path: Path,
                                                    redis_server: RedisServer) -> None:
    report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 96, "f",
                                                       max_tokens=24)), "--json")
    batch = report["batch_id"]
    worker = Worker(env, tmp_path / "w.log", "--slots", "4", "--concurrency", "2")
    try:
        worker.wait_ready()
        _wait_for(lambda: service.status(batch)["counts"]["succeeded"] >= 8)
        redis_server.flush()  # every queued message and the unacked ones are gone
        assert service.status(batch)["counts"]["queued"] > 0
        info = wait_done(batch, timeout=180)
    finally:
        worker.stop()
    assert info["counts"]["succeeded"] == 96
    assert_every_request_ended_once()
    # once at start (this test's Redis is new), once after the flush
    assert (tmp_path / "w.log").read_text().count("the broker lost its messages") >= 2


def test_sigterm_mid_batch_hands_back_within_the_grace_period(env: dict, tmp_path: Path
                                                              ) -> None:
    """What docker and Kubernetes send: the worker stops taking messages, gives what it
    still runs after LLMQ_SHUTDOWN_GRACE_SECONDS back to the queue (with messages), and
    exits 0; nothing is left running, and another worker finishes the batch."""
    grace = 2.0
    # 24 long requests through one slot: what is left when the signal comes is ~10,000
    # decode steps, several times what any CPU here runs in the grace (with 8 slots, a fast
    # one once finished the whole batch inside it, and nothing was handed back)
    report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 24, "t",
                                                       max_tokens=450)), "--json")
    batch = report["batch_id"]
    first = Worker({**env, "LLMQ_SHUTDOWN_GRACE_SECONDS": str(grace)}, tmp_path / "w1.log",
                   "--slots", "1", "--concurrency", "1")
    first.wait_ready()
    _wait_for(lambda: service.status(batch)["counts"]["succeeded"] >= 2)
    assert service.status(batch)["counts"]["running"] > 0
    started = time.monotonic()
    os.killpg(first.proc.pid, signal.SIGTERM)
    assert first.proc.wait(timeout=60) == 0
    assert time.monotonic() - started < grace + 30  # the grace, then closing down
    after = service.status(batch)["counts"]
    assert after["running"] == 0 and after["succeeded"] < 24  # handed back, not finished
    assert "handed back" in (tmp_path / "w1.log").read_text()
    second = Worker(env, tmp_path / "w2.log", "--slots", "4", "--concurrency", "2")
    try:
        second.wait_ready()
        info = wait_done(batch, timeout=180)
    finally:
        second.stop()
    assert info["counts"]["succeeded"] == 24
    assert_every_request_ended_once()


def test_redis_restarted_with_aof_mid_batch(env: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that keeps its data (AOF, as compose runs it) is killed and started again
    while a worker runs: the worker reconnects and every request ends once."""
    redis = RedisServer(tmp_path / "redis-aof", appendonly=True)
    (tmp_path / "redis-aof").mkdir()
    redis.start()
    env = {**env, "LLMQ_BROKER_URL": redis.url}
    monkeypatch.setenv("LLMQ_BROKER_URL", redis.url)
    try:
        report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 48, "a",
                                                           max_tokens=200)), "--json")
        batch = report["batch_id"]
        worker = Worker(env, tmp_path / "w.log", "--slots", "4", "--concurrency", "2")
        try:
            worker.wait_ready()
            _wait_for(lambda: service.status(batch)["counts"]["succeeded"] >= 8)
            redis.stop()  # kill -9
            time.sleep(3)
            redis.start()  # same port, same folder: the AOF is replayed
            info = wait_done(batch, timeout=240)
        finally:
            worker.stop()
    finally:
        redis.stop()
    assert info["counts"]["succeeded"] == 48
    assert_every_request_ended_once()
