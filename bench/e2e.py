"""The whole service against the engine alone: 1,000 requests (the shared workload's prompts
repeated, 32 new tokens each, EOS ignored) through submit -> Redis -> one `llmq worker` ->
PostgreSQL, and the same requests through the engine in one process, interleaved; then the
time to submit 10,000 requests and to read `status` of that batch.

    .venv/bin/python -m bench.e2e [--runs 2] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import markdown_table, median, record, run_child, workload
from tests.private_servers import private_redis, scratch_postgres

NEW_TOKENS = 32
SLOTS = 64


def write_requests(path: Path, n: int) -> Path:
    prompts = workload()
    with path.open("w") as f:
        for i in range(n):
            p = prompts[i % len(prompts)]
            f.write(json.dumps({"custom_id": f"r{i:05d}", "messages": p["messages"],
                                "max_tokens": NEW_TOKENS, "ignore_eos": True}) + "\n")
    return path


def llmq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "llmq", *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return proc


def batch_status(url: str, batch_id: str) -> dict:
    from llmq.db import queries
    from llmq.db.session import session_scope

    with session_scope(url) as session:
        return queries.batch_summary(session, queries.get_batch(session, batch_id))


def through_service(env: dict[str, str], requests: Path, log: Path) -> float:
    """Generated tokens/s from submit to the last result, with a warm worker."""
    worker = subprocess.Popen([sys.executable, "-m", "llmq", "worker", "--device", "cpu",
                               "--slots", str(SLOTS)], env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while " ready." not in log.read_text():
            if worker.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.2)
        start = time.time()
        batch = json.loads(llmq(env, "submit", str(requests), "--json").stdout)["batch_id"]
        # poll in this process, rarely: a CLI process per poll would take CPU from the worker
        while True:
            info = batch_status(env["LLMQ_DATABASE_URL"], batch)
            if info["state"] == "completed":
                break
            time.sleep(2.0)
        finished = datetime.fromisoformat(info["finished_at"].rstrip("Z")).replace(tzinfo=UTC)
        seconds = finished.timestamp() - start
        if info["counts"]["succeeded"] != info["counts"]["total"]:
            raise RuntimeError(f"not all succeeded: {info['counts']}")
        return info["completion_tokens"] / seconds
    finally:
        worker.terminate()
        worker.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--requests", type=int, default=1000)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmq-bench-"))
    requests = write_requests(tmp / "requests.jsonl", opts.requests)
    big = write_requests(tmp / "big.jsonl", 10_000)
    engine_tps, service_tps, submit_s, status_s = [], [], [], []
    with private_redis() as redis_url, scratch_postgres() as pg_url:
        env = {**os.environ, "LLMQ_DATABASE_URL": pg_url, "LLMQ_BROKER_URL": redis_url,
               "LLMQ_THREADS": "2"}
        llmq(env, "db", "upgrade")
        for run in range(opts.runs):
            res = run_child("bench.engine_child", {
                "engine": "llmq", "slots": SLOTS, "new_tokens": NEW_TOKENS,
                "repeat_to": opts.requests, "step_tokens": 2048})
            engine_tps.append(res["tok_s"])
            print(f"run {run + 1}: engine alone {res['tok_s']:.1f} tok/s", flush=True)
            tps = through_service(env, requests, tmp / f"worker{run}.log")
            service_tps.append(tps)
            print(f"run {run + 1}: service {tps:.1f} tok/s", flush=True)
        for _ in range(3):
            start = time.perf_counter()
            batch = json.loads(llmq(env, "submit", str(big), "--json").stdout)["batch_id"]
            submit_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            llmq(env, "status", batch, "--json")
            status_s.append(time.perf_counter() - start)
    e, s = median(engine_tps), median(service_tps)
    table = markdown_table(["measure", "median", "target"], [
        [f"engine alone, {opts.requests} requests, {SLOTS} slots (tok/s)", f"{e:.1f}", ""],
        ["submit -> Redis -> 1 worker -> PostgreSQL (tok/s)", f"{s:.1f}", ""],
        ["service / engine", f"{s / e:.2f}", ">= 0.9"],
        ["`llmq submit` of 10,000 requests (s, whole command)", f"{median(submit_s):.2f}",
         "< 5"],
        ["`llmq status --json` on that batch (s, whole command)", f"{median(status_s):.2f}",
         ""],
    ])
    notes = (f"{opts.requests} requests = the 64 shared-workload prompts repeated, {NEW_TOKENS} "
             f"new tokens each, greedy, EOS ignored, 2 threads; median of {opts.runs} runs, "
             "engine and service interleaved; the service figure runs from `llmq submit` to "
             "the batch's completion as `llmq status` sees it (worker already loaded); the "
             "engine figure excludes model load. Submit/status: median of 3, each a fresh "
             "process (Python start-up included).")
    print(table)
    print(notes)
    record("Service end to end (bench/e2e.py)", table, notes)


if __name__ == "__main__":
    main()
