"""Chaos soak: requests through 3 workers while a random worker is killed with SIGKILL every
20 s (and replaced, as an orchestrator would) and Redis is restarted once without
persistence; then the invariant (every request terminal, exactly one result each, none for
anything else) and the throughput against the same run without chaos, both in one sitting.

    .venv/bin/python -m bench.chaos [--requests 3000] [--new-tokens 8] [--prompt-words 12]
                                    [--limit-s 600]

The soak tests delivery, not the model: by default each request is the first 12 words of a
shared-workload prompt as a plain completion (about 15 prompt tokens), so that 3,000 of them
fit in 10 minutes on 2 cores. ``--prompt-words 0`` sends the whole chat prompts (about 190
tokens each after the template): on the 2-core AMD EPYC of 2026-11-29 the calm run alone
then needs about 12 minutes, all of it prefill compute.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import markdown_table, record, workload
from tests.private_servers import RedisServer, scratch_postgres

WORKERS = 3
KILL_EVERY = 20.0
FAST_LIVENESS = {"LLMQ_HEARTBEAT_SECONDS": "2", "LLMQ_WORKER_TIMEOUT": "10",
                 "LLMQ_REAPER_SECONDS": "5", "LLMQ_RESEND_AFTER": "30", "LLMQ_THREADS": "1"}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "llmq", "worker", "--device", "cpu",
                             "--slots", "32", "--concurrency", "4"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def write_requests(path: Path, n: int, new_tokens: int, prompt_words: int) -> Path:
    prompts = workload()
    with path.open("w") as f:
        for i in range(n):
            messages = prompts[i % len(prompts)]["messages"]
            line: dict[str, object] = {"custom_id": f"r{i}", "max_tokens": new_tokens,
                                       "ignore_eos": True}
            if prompt_words:
                words = messages[-1]["content"].split()[:prompt_words]
                line["prompt"] = " ".join(words)
            else:
                line["messages"] = messages
            f.write(json.dumps(line) + "\n")
    return path


def counts(url: str, batch: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT state, count(*) FROM requests WHERE batch_id = :b "
                                 "GROUP BY state"), {"b": batch}).all()
    engine.dispose()
    return {state: n for state, n in rows}


def invariant(url: str) -> dict[str, int]:
    engine = create_engine(url)
    checks = {
        "unfinished": "SELECT count(*) FROM requests WHERE state IN ('queued', 'running')",
        "results_minus_succeeded": "SELECT (SELECT count(*) FROM results) - "
                                   "(SELECT count(*) FROM requests WHERE state = 'succeeded')",
        "duplicate_results": "SELECT count(*) FROM (SELECT request_id FROM results GROUP BY "
                             "request_id HAVING count(*) > 1) d",
        "orphan_results": "SELECT count(*) FROM results r LEFT JOIN requests q ON "
                          "q.id = r.request_id WHERE q.id IS NULL",
    }
    with engine.connect() as conn:
        out = {k: int(conn.execute(text(q)).scalar_one()) for k, q in checks.items()}
    engine.dispose()
    return out


@dataclass
class Outcome:
    seconds: float
    tok_s: float
    counts: dict[str, int]
    invariant: dict[str, int]
    kills: int
    redis_restart: bool
    ran_more_than_once: int
    failure_reasons: dict[str, int]


def one_run(chaos: bool, opts: argparse.Namespace, tmp: Path) -> Outcome:
    (tmp / f"redis-{chaos}").mkdir()
    redis = RedisServer(tmp / f"redis-{chaos}")  # no persistence: a restart comes back empty
    redis.start()
    with scratch_postgres() as pg_url:
        env = {**os.environ, "LLMQ_DATABASE_URL": pg_url,
               "LLMQ_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0", **FAST_LIVENESS}
        subprocess.run([sys.executable, "-m", "llmq", "db", "upgrade"], env=env, check=True,
                       capture_output=True)
        path = write_requests(tmp / "requests.jsonl", opts.requests, opts.new_tokens,
                              opts.prompt_words)
        logs = tmp / f"workers-{chaos}.log"
        workers = [start_worker(env, logs) for _ in range(WORKERS)]
        start = time.time()
        out = subprocess.run([sys.executable, "-m", "llmq", "submit", str(path), "--json"],
                             env=env, check=True, capture_output=True, text=True).stdout
        batch = json.loads(out)["batch_id"]
        kills, restarted, next_kill = 0, False, start + KILL_EVERY
        try:
            while True:
                c = counts(pg_url, batch)
                if not c.get("queued") and not c.get("running"):
                    break
                if time.time() - start > opts.limit_s:  # recorded as it stands
                    print(f"not done in {opts.limit_s:.0f}s: {c}", flush=True)
                    break
                if chaos and time.time() >= next_kill:
                    victim = random.randrange(WORKERS)
                    os.killpg(workers[victim].pid, signal.SIGKILL)
                    workers[victim].wait()
                    workers[victim] = start_worker(env, logs)
                    kills += 1
                    next_kill += KILL_EVERY
                    if kills == 2 and not restarted:  # once, between two kills
                        redis.stop()
                        redis.start()
                        restarted = True
                time.sleep(1.0)
            seconds = time.time() - start
        finally:
            for w in workers:
                if w.poll() is None:
                    os.killpg(w.pid, signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
            redis.stop()
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            tokens = int(conn.execute(text("SELECT coalesce(sum(completion_tokens), 0) FROM "
                                           "results")).scalar_one())
            attempts = int(conn.execute(text("SELECT count(*) FROM requests WHERE "
                                             "attempts > 1")).scalar_one())
            reasons = dict(conn.execute(text(  # recorded: the scratch database is dropped
                "SELECT left(coalesce(last_error, ''), 80), count(*) FROM requests "
                "WHERE state = 'failed' GROUP BY 1")).all())
        engine.dispose()
        return Outcome(seconds, tokens / seconds, counts(pg_url, batch), invariant(pg_url),
                       kills, restarted, attempts, reasons)


def verdict(inv: dict[str, int]) -> str:
    """The invariant's state; requests still queued or running when the time limit cut the
    run are not a breach (the workers were stopped while working on them)."""
    broken = {k: v for k, v in inv.items() if v and k != "unfinished"}
    if broken:
        return f"BROKEN {broken}"
    if inv["unfinished"]:
        return f"holds; cut off at the limit with {inv['unfinished']} unfinished"
    return "holds"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--prompt-words", type=int, default=12,
                    help="words of each prompt sent as a plain completion; 0: whole chats")
    ap.add_argument("--limit-s", type=float, default=600)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmq-chaos-"))
    calm = one_run(False, opts, tmp)
    print(f"without chaos: {calm}", flush=True)
    wild = one_run(True, opts, tmp)
    print(f"with chaos: {wild}", flush=True)
    rows = []
    for name, r in (("no chaos", calm), ("chaos", wild)):
        rows.append([name, f"{r.seconds:.0f}", f"{r.tok_s:.1f}",
                     f"{r.counts.get('succeeded', 0)}/{opts.requests}",
                     r.counts.get("failed", 0), r.kills, "yes" if r.redis_restart else "no",
                     r.ran_more_than_once, verdict(r.invariant)])
    table = markdown_table(["run", "seconds", "tok/s", "succeeded", "failed", "workers killed",
                            "Redis restarted", "requests run more than once", "invariant"],
                           rows)
    ratio = wild.tok_s / calm.tok_s
    shape = (f"the first {opts.prompt_words} words of the shared workload's prompts as plain "
             f"completions" if opts.prompt_words else "the shared workload's chat prompts")
    notes = (f"{opts.requests} requests ({shape}, repeated), "
             f"{opts.new_tokens} new tokens each, SmolLM2 fp32, {WORKERS} workers of 32 slots "
             f"and 1 thread each on this machine's cores, PostgreSQL and a private Redis "
             f"without persistence; chaos: a random worker killed with SIGKILL every "
             f"{KILL_EVERY:.0f} s and started again, Redis restarted (empty) once; liveness "
             f"at {FAST_LIVENESS['LLMQ_HEARTBEAT_SECONDS']} s heartbeats and a "
             f"{FAST_LIVENESS['LLMQ_WORKER_TIMEOUT']} s worker timeout. Throughput with chaos "
             f"is {ratio:.2f}x the calm run's, measured in the same sitting. Why requests "
             f"failed: {json.dumps(wild.failure_reasons) if wild.failure_reasons else 'none did'}.")
    print(table)
    print(notes)
    record("Chaos soak (bench/chaos.py)", table, notes)


if __name__ == "__main__":
    main()
