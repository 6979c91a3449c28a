"""How fast the status page answers with many rows stored: 10,000 batches and 1,000,000
requests with results (spread over 30 days, a few hundred batches a day; the newest still
running, some cancelled, some with failures), ten keys and an admin. `llmq serve` runs in a
process of its own; each page is fetched in turn, ``--rounds`` times, and its p50 and p99
reported, as an admin (every batch) and as one key (a tenth of them).

    python -m bench.ui [--batches 10000] [--requests 100] [--rounds 40] [--postgres] [--record]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

from bench.common import markdown_table, record

KEYS = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=100, help="requests per batch")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--postgres", action="store_true",
                    help="a scratch database on the machine's PostgreSQL instead of SQLite")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="llmq-ui-"))
    if args.postgres:
        from llmq.db.session import dispose_engines
        from tests.private_servers import scratch_postgres

        with scratch_postgres(before_drop=dispose_engines) as url:
            run(args, scratch, url)
    else:
        run(args, scratch, f"sqlite:///{scratch / 'llmq.db'}")


def populate(args: argparse.Namespace) -> tuple[str, list[str], str, str]:
    """Fills the database; returns the admin key, the keys, a big finished batch of the
    first key and a running one."""
    from sqlalchemy import insert

    from llmq.api.keys import create_key
    from llmq.db.migrate import upgrade
    from llmq.db.models import Batch, Request, RequestState, Result, Worker, utcnow
    from llmq.db.session import session_scope

    upgrade()
    admin = create_key("operator", admin=True)["key"]
    keys = [create_key(f"team-{i}") for i in range(KEYS)]
    now = utcnow()
    span = timedelta(days=args.days)
    step = span / args.batches
    request_id = 0
    started = time.perf_counter()
    finished_batch = running_batch = ""
    chunk_batches = 200
    for first in range(0, args.batches, chunk_batches):
        batches, requests, results = [], [], []
        for b in range(first, min(first + chunk_batches, args.batches)):
            created = now - span + step * b
            batch_id = f"batch_{b:08d}"
            owner = keys[b % KEYS]["id"]
            running = b >= args.batches - 20  # the newest are still going
            cancelled = not running and b % 97 == 0
            batches.append({"id": batch_id, "name": f"nightly {b}", "model": "smollm2-135m",
                            "device": "any", "priority": "normal", "meta": {"n": str(b)},
                            "created_at": created, "owner": owner,
                            "cancelled_at": created + timedelta(minutes=5) if cancelled
                            else None, "input_file_id": f"file-{b}",
                            "endpoint": "/v1/chat/completions", "validated_at": created,
                            "announced_at": created})
            if owner == keys[0]["id"]:
                if running:
                    running_batch = batch_id
                else:
                    finished_batch = batch_id
            for i in range(args.requests):
                request_id += 1
                t = created + timedelta(seconds=2 * i)
                state = RequestState.SUCCEEDED
                if running and i >= args.requests // 3:
                    state = RequestState.QUEUED if i > args.requests // 2 else (
                        RequestState.RUNNING)
                elif cancelled and i >= args.requests // 2:
                    state = RequestState.CANCELLED
                elif b % 13 == 0 and i % 25 == 0:
                    state = RequestState.FAILED
                ended = state in (RequestState.SUCCEEDED, RequestState.FAILED,
                                  RequestState.CANCELLED)
                requests.append({
                    "id": request_id, "batch_id": batch_id, "custom_id": f"r{i}",
                    "line": i + 1, "model": "smollm2-135m", "input": {"prompt": "p"},
                    "params": {}, "kind": "chat", "state": state, "attempts": 1,
                    "last_error": "engine error: out of memory" if state ==
                    RequestState.FAILED else None, "created_at": created, "enqueued_at":
                    created, "started_at": t if state != RequestState.QUEUED else None,
                    "first_token_at": t if ended else None,
                    "finished_at": t + timedelta(seconds=3) if ended else None})
                if state == RequestState.SUCCEEDED:
                    results.append({
                        "request_id": request_id, "text": "x" * 200, "finish_reason": "stop",
                        "prompt_tokens": 40, "completion_tokens": 60, "worker_host": "h",
                        "worker_pid": 1, "device": "cpu", "model": "smollm2-135m",
                        "engine_batch_size": 32.0, "queue_ms": 2000.0 * i,
                        "prefill_ms": 30.0, "decode_ms": 2500.0,
                        "total_ms": 2000.0 * i + 2530.0,
                        "created_at": t + timedelta(seconds=3)})
        with session_scope() as s:
            s.execute(insert(Batch), batches)
            s.execute(insert(Request), requests)
            s.execute(insert(Result), results)
        if (first // chunk_batches) % 10 == 0:
            print(f"  {first + len(batches)} batches, {request_id} requests "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    with session_scope() as s:
        for i in range(3):
            s.add(Worker(name=f"host{i}:{100 + i}:x", host=f"host{i}", pid=100 + i,
                         model="smollm2-135m", device="cpu", started_at=now,
                         heartbeat_at=now, stats={"slots": 64, "running": 40}))
    if not os.environ["LLMQ_DATABASE_URL"].startswith("sqlite"):
        # what autovacuum's analyze does after a bulk load (it is off on this machine's
        # server): without statistics the planner scans the million requests
        from sqlalchemy import text

        with session_scope() as s:
            s.execute(text("ANALYZE"))
    return admin, [k["key"] for k in keys], finished_batch, running_batch


def signed_in(base: str, key: str) -> httpx.Client:
    http = httpx.Client(base_url=base, timeout=60)
    answer = http.post("/ui/login", data={"key": key}, headers={"Origin": base})
    assert answer.status_code == 303, answer.text
    token = re.search(r"llmq_ui=([^;]+)", answer.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    http.cookies.set("llmq_ui", token)
    return http


def run(args: argparse.Namespace, scratch: Path, url: str) -> None:
    os.environ["LLMQ_DATABASE_URL"] = url
    os.environ.setdefault("LLMQ_BROKER_URL", "redis://127.0.0.1:6379/15")
    os.environ["LLMQ_MODEL_DIR"] = str(scratch / "models")
    t0 = time.perf_counter()
    admin, keys, finished_batch, running_batch = populate(args)
    fill_s = time.perf_counter() - t0
    port = 18000 + os.getpid() % 1000
    log = (scratch / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "llmq", "serve", "--port", str(port),
                               "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                              env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        pages = {"admin": ["/ui", "/ui/batches", f"/ui/batches?page={args.batches // 50}",
                           "/ui/batches?state=running", "/ui/batches?state=failed",
                           "/ui/batches?state=cancelled",
                           f"/ui/batches/{finished_batch}", f"/ui/batches/{running_batch}",
                           "/ui/pipelines", "/ui/models"],
                 "one key": ["/ui", "/ui/batches", f"/ui/batches?page={args.batches // 500}",
                             "/ui/batches?state=failed", f"/ui/batches/{finished_batch}"]}
        rows = []
        worst = 0.0
        for who, paths in pages.items():
            http = signed_in(base, admin if who == "admin" else keys[0])
            for path in paths:
                for _ in range(3):  # warm: the first read of a page fills caches
                    assert http.get(path).status_code == 200, path
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    answer = http.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    assert answer.status_code == 200, (path, answer.text[:300])
                times.sort()
                p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
                worst = max(worst, p99)
                rows.append([who, path.replace(finished_batch, "<finished>").replace(
                    running_batch, "<running>"), f"{statistics.median(times):.1f}",
                    f"{p99:.1f}", f"{max(times):.1f}"])
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(20)
    table = markdown_table(["viewer", "page", "p50 ms", "p99 ms", "max ms"], rows)
    print(table)
    kind = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    notes = (f"{args.batches:,} batches of {args.requests} requests "
             f"({args.batches * args.requests:,} requests, results for the succeeded) over "
             f"{args.days} days, {KEYS} keys, on {kind}; filled in {fill_s:.0f} s. Each page "
             f"fetched {args.rounds} times after 3 warm-ups, one at a time, by httpx from "
             f"this process against `llmq serve` (one process). Worst p99: {worst:.1f} ms "
             "(target: under 200 ms).")
    print(notes)
    if args.record:
        record(f"Status page with many rows, {kind} (bench/ui.py)", table, notes)


if __name__ == "__main__":
    main()
