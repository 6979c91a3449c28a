"""100,000 requests in one file: submit streams it in chunks, so its memory does not grow
with the file (beyond the ids it reports), and every request is stored and sent once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from llmq.db.session import get_engine
from tests.private_servers import RedisServer

# VmHWM, not getrusage: ru_maxrss survives exec, so a child of pytest would start at
# pytest's own peak
PEAK_RSS = """
import runpy, sys
sys.argv = ["llmq", *sys.argv[1:]]
try:
    runpy.run_module("llmq", run_name="__main__")
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("peak_rss_kb", hwm.split()[1], file=sys.stderr)
"""


def submit_peak_mb(env: dict[str, str], path: Path) -> tuple[dict, float]:
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "submit", str(path), "--json"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kb = int(proc.stderr.rsplit("peak_rss_kb", 1)[1].split()[0])
    return json.loads(proc.stdout), kb / 1024


def write_lines(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i}", "prompt": f"Say something about {i}.",
                                "max_tokens": 8}) + "\n")
        f.write("{not json\n")
    return path


def test_submit_of_100k_lines_keeps_its_memory(tmp_path: Path, redis_server: RedisServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flush()
    url = f"sqlite:///{tmp_path / 'llmq.db'}"
    env = {"LLMQ_DATABASE_URL": url, "LLMQ_BROKER_URL": redis_server.url}
    small, small_mb = submit_peak_mb(env, write_lines(tmp_path / "10k.jsonl", 10_000))
    big, big_mb = submit_peak_mb(env, write_lines(tmp_path / "100k.jsonl", 100_000))
    print(f"submit peak RSS: 10,000 lines {small_mb:.0f} MB, 100,000 lines {big_mb:.0f} MB")
    assert small["accepted"] == 10_000 and big["accepted"] == 100_000
    assert big["rejected"][0]["line"] == 100_001
    # held whole, 90,000 more lines cost hundreds of MB (parsed lines, rows, params)
    assert big_mb - small_mb < 40
    monkeypatch.setenv("LLMQ_DATABASE_URL", url)
    with get_engine(url).connect() as conn:
        queued, unsent = conn.execute(text(
            "SELECT count(*), count(*) - count(enqueued_at) FROM requests "
            "WHERE batch_id = :b AND state = 'queued'"), {"b": big["batch_id"]}).one()
    assert (queued, unsent) == (100_000, 0)  # all stored, all sent
    import redis

    client = redis.Redis.from_url(redis_server.url)
    depth = sum(client.llen(k) for k in client.keys("any.*"))
    assert depth == (10_000 + 15) // 16 + (100_000 + 15) // 16  # one message per 16 ids
