"""submit -> Redis -> a real `llmq worker` process -> SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime
from pathlib import Path

import pytest

from llmq.api import service
from llmq.db.migrate import upgrade
from tests.conftest import Tiny

from .workers import Worker, count_rows, llmq, llmq_json


def prompts_file(path: Path, n: int, prefix: str, max_tokens: int = 8) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"{prefix}{i:03d}",
                                "messages": [{"role": "user", "content": f"Question {i}?"}],
                                "max_tokens": max_tokens, "ignore_eos": True}) + "\n")
    return path


def wait_done(batch_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = service.status(batch_id)
        if info["state"] in ("completed", "cancelled"):
            return info
        time.sleep(0.3)
    raise TimeoutError(service.status(batch_id))


@pytest.fixture
def env(llmq_env: dict[str, str], tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("LLMQ_MODEL", str(tiny.gguf))
    upgrade()
    return {**llmq_env, "LLMQ_MODEL": str(tiny.gguf)}


def test_two_batches_by_priority_all_succeed_once(env: dict, tmp_path: Path) -> None:
    low = llmq_json(env, "submit", str(prompts_file(tmp_path / "low.jsonl", 100, "low")),
                    "--priority", "low", "--json")
    high = llmq_json(env, "submit", str(prompts_file(tmp_path / "high.jsonl", 100, "high")),
                     "--priority", "high", "--name", "urgent", "--json")
    assert low["accepted"] == 100 and low["rejected"] == []
    assert service.status(high["batch_id"])["state"] == "queued"
    worker = Worker(env, tmp_path / "worker.log", "--slots", "8", "--concurrency", "4")
    try:
        worker.wait_ready()
        infos = [wait_done(b["batch_id"]) for b in (low, high)]
    finally:
        worker.stop()
    for info in infos:
        assert info["state"] == "completed"
        assert info["counts"] == {"total": 100, "queued": 0, "running": 0, "succeeded": 100,
                                  "failed": 0, "cancelled": 0}
    assert count_rows("SELECT count(*) FROM results") == 200
    assert count_rows("SELECT count(DISTINCT request_id) FROM results") == 200
    # created <= started <= first token <= finished, for every request
    assert count_rows("SELECT count(*) FROM requests WHERE NOT (created_at <= started_at AND "
                      "started_at <= first_token_at AND first_token_at <= finished_at)") == 0
    # the high-priority batch, submitted last, was served first
    status = llmq_json(env, "status", high["batch_id"], "--json")
    low_done = datetime.fromisoformat(service.status(low["batch_id"])["finished_at"][:-1])
    assert datetime.fromisoformat(status["finished_at"][:-1]) < low_done
    lines = [json.loads(x) for x in llmq(env, "results", high["batch_id"]).stdout.splitlines()]
    assert [x["custom_id"] for x in lines] == [f"high{i:03d}" for i in range(100)]
    first = lines[0]
    assert first["status"] == "succeeded" and first["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 8 and first["usage"]["prompt_tokens"] > 10
    for line in lines:  # the parts of a request's time add up to its total
        t = line["timing"]
        assert t["prefill_ms"] > 0 and t["decode_ms"] > 0  # 1 token, then 7 decode steps
        assert t["queue_ms"] + t["prefill_ms"] + t["decode_ms"] == pytest.approx(
            t["total_ms"], abs=0.01)
    openai = json.loads(llmq(env, "results", high["batch_id"], "--format", "openai")
                        .stdout.splitlines()[0])
    assert openai["response"]["body"]["choices"][0]["message"]["content"] == first["text"]
    stats = llmq_json(env, "stats", high["batch_id"], "--json")
    assert stats["succeeded"] == 100 and stats["completion_tokens"] == 800
    # stats reads requests' times, results carry the same as durations: they must agree
    ttft = statistics.median(x["timing"]["queue_ms"] + x["timing"]["prefill_ms"] for x in lines)
    assert stats["time_to_first_token_ms"]["p50"] == pytest.approx(ttft, abs=1.0)
    assert stats["total_ms"]["p50"] == pytest.approx(
        statistics.median(x["timing"]["total_ms"] for x in lines), abs=1.0)


def test_bad_lines_fail_alone_and_cancel_stops_the_rest(env: dict, tmp_path: Path) -> None:
    path = prompts_file(tmp_path / "mixed.jsonl", 30, "ok", max_tokens=150)
    with path.open("a") as f:
        f.write("{broken\n")
        f.write(json.dumps({"custom_id": "long", "prompt": "word " * 400}) + "\n")
    report = llmq_json(env, "submit", str(path), "--json")
    assert report["accepted"] == 31
    assert report["rejected"] == [{"line": 31, "custom_id": None,
                                   "error": "line 31: invalid JSON: Expecting property name "
                                            "enclosed in double quotes at column 2"}]
    strict = llmq(env, "submit", str(path), "--strict", check=False)
    assert strict.returncode == 1 and "nothing submitted" in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    # both messages are claimed at once, so "long" reaches the engine before the cancel
    worker = Worker({**env, "LLMQ_SLOT_LENGTH": "256"}, tmp_path / "worker.log", "--slots", "2",
                    "--concurrency", "2")
    try:
        worker.wait_ready()
        batch = report["batch_id"]
        deadline = time.time() + 120
        while service.status(batch)["counts"]["succeeded"] < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert "cancelled" in llmq(env, "cancel", batch).stdout
        info = wait_done(batch)
        c = info["counts"]
        assert info["state"] == "cancelled" and c["cancelled"] > 0 and c["succeeded"] >= 2
        assert c["total"] == 32 and c["failed"] == 2
        # watch follows to the end; on a finished batch it returns at once with its state
        assert llmq(env, "watch", batch).stdout.strip() == f"{batch} cancelled"
        requeued = llmq(env, "retry", batch, "--cancelled").stdout
        assert f"re-queued {c['cancelled'] + 1} requests" in requeued  # not the invalid line
        info = wait_done(batch)
    finally:
        worker.stop()
    c = info["counts"]
    assert info["state"] == "completed" and c["succeeded"] == 30 and c["failed"] == 2
    lines = {x["custom_id"]: x for x in map(json.loads, llmq(env, "results", batch)
                                             .stdout.splitlines())}
    assert lines["line-31"]["status"] == "failed" and "invalid JSON" in lines["line-31"]["error"]
    assert lines["long"]["status"] == "failed"
    assert "exceeds the context of 256 tokens" in lines["long"]["error"]


def test_an_interactive_call_passes_feeders_held_by_bulk_work(env: dict, tmp_path: Path) -> None:
    """One feeder thread, held by a low-priority message until its requests are done: the
    interactive request still reaches the engine (the express lane), preempts a bulk
    request and ends while the bulk batch has most of its work left."""
    from llmq.api import completions

    low = llmq_json(env, "submit", str(prompts_file(tmp_path / "low.jsonl", 32, "low", 96)),
                    "--priority", "low", "--json")
    worker = Worker(env, tmp_path / "worker.log", "--slots", "2", "--concurrency", "1")
    try:
        worker.wait_ready()
        while service.status(low["batch_id"])["counts"]["running"] == 0:
            time.sleep(0.1)
        request_id, _, _ = completions.start(None, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Quick?"}], "max_tokens": 4})
        deadline = time.time() + 120
        while (line := completions.outcome(request_id)) is None:
            assert time.time() < deadline
            time.sleep(0.05)
        counts = service.status(low["batch_id"])["counts"]
        assert line["response"]["status_code"] == 200
        assert counts["succeeded"] < 16, counts  # the bulk is far from done
        stats = llmq_json(env, "stats", "--json")
        assert set(stats["by_priority"]) == {"low", "interactive"}
    finally:
        worker.stop()
    text = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in text
