"""Retention soak: a simulated year of daily batches (each with its results and an output
file) on a database that purges what is older than the retention, the way the workers'
sweep does (llmq.worker.retention), measuring that the database's rows and the files folder
stay bounded and how long each simulated month takes.

    .venv/bin/python -m bench.retention [--days 365] [--requests 1000] [--retention-days 30]
                                        [--postgres] [--record]

No model runs: the rows are what workers would have written (results of 40 prompt and 60
generated tokens). SQLite in a scratch folder, or with ``--postgres`` a scratch database on
the machine's PostgreSQL."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update

from bench.common import markdown_table, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--requests", type=int, default=1000, help="requests per daily batch")
    ap.add_argument("--retention-days", type=int, default=30)
    ap.add_argument("--postgres", action="store_true",
                    help="a scratch database on the machine's PostgreSQL instead of SQLite")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="llmq-retention-"))
    if args.postgres:
        from llmq.db.session import dispose_engines
        from tests.private_servers import scratch_postgres

        with scratch_postgres(before_drop=dispose_engines) as url:
            soak(args, scratch, url)
    else:
        soak(args, scratch, f"sqlite:///{scratch / 'llmq.db'}")


def database_mb(url: str, scratch: Path) -> float:
    """The database's size on disk: SQLite's file and its log, or PostgreSQL's own count."""
    if url.startswith("sqlite"):
        return sum(p.stat().st_size for p in scratch.glob("llmq.db*")) / 1e6
    from sqlalchemy import text

    from llmq.db.session import get_engine

    with get_engine().connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())"))
                   .scalar_one()) / 1e6


def vacuum() -> None:
    """PostgreSQL's plain VACUUM of the tables a purge deletes from, as autovacuum runs it:
    dead rows' space becomes reusable (this machine's server has autovacuum off, and a
    simulated day is a fraction of a second)."""
    from sqlalchemy import text

    from llmq.db.session import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("results", "requests", "batches", "files"):
            conn.execute(text(f"VACUUM {table}"))


def soak(args: argparse.Namespace, scratch: Path, url: str) -> None:
    os.environ["LLMQ_DATABASE_URL"] = url
    os.environ["LLMQ_FILES_DIR"] = str(scratch / "files")

    from llmq.api.files import write_generated
    from llmq.db import queries
    from llmq.db.migrate import upgrade
    from llmq.db.models import Batch, Request, RequestState, Result, StoredFile, utcnow
    from llmq.db.session import session_scope
    from llmq.worker.retention import purge

    upgrade()
    start = utcnow() - timedelta(days=args.days)
    month_started, rows = time.perf_counter(), []
    for day in range(args.days):
        today = start + timedelta(days=day)
        new = [queries.NewRequest(f"d{day}-{i}", "chat", {"prompt": "p"}, {"max_tokens": 60})
               for i in range(args.requests)]
        with session_scope() as s:
            batch_id, ids = queries.create_batch(s, requests=new, model="m")
            s.execute(update(Batch).where(Batch.id == batch_id).values(created_at=today))
            s.execute(update(Request).where(Request.batch_id == batch_id).values(
                state=RequestState.SUCCEEDED, created_at=today, started_at=today,
                first_token_at=today, finished_at=today))
            s.execute(insert(Result), [
                {"request_id": rid, "text": "x" * 300, "finish_reason": "stop",
                 "prompt_tokens": 40, "completion_tokens": 60, "worker_host": "h",
                 "worker_pid": 1, "device": "cpu", "model": "m", "engine_batch_size": 32.0,
                 "queue_ms": 1.0, "prefill_ms": 1.0, "decode_ms": 1.0, "total_ms": 3.0,
                 "created_at": today} for rid in ids])
        output = f"file-{batch_id}-output"
        write_generated(output, None, "out.jsonl",
                        ({"custom_id": f"d{day}-{i}", "text": "x" * 300}
                         for i in range(args.requests)))
        with session_scope() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(
                output_file_id=output, finalized_at=today))
        purge(timedelta(days=args.retention_days), now=today)  # the sweep, that day
        if not url.startswith("sqlite"):
            vacuum()  # what autovacuum does many times in a real day
        if (day + 1) % 30 == 0 or day + 1 == args.days:
            with session_scope() as s:
                counts = [s.scalar(select(func.count()).select_from(t))
                          for t in (Batch, Request, Result, StoredFile)]
            folder_mb = sum(p.stat().st_size for p in (scratch / "files").iterdir()) / 1e6
            seconds = time.perf_counter() - month_started
            rows.append([day + 1, *counts, f"{database_mb(url, scratch):.1f}",
                         f"{folder_mb:.1f}", f"{seconds:.1f}"])
            print(rows[-1], flush=True)
            month_started = time.perf_counter()
    table = markdown_table(["simulated day", "batches", "requests", "results", "files",
                            "database MB", "files folder MB", "wall s for the month"], rows)
    print(table)
    bound = (args.retention_days + 1) * args.requests
    kind = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    notes = (f"{args.days} daily batches of {args.requests} requests with results and an "
             f"output file, purged each simulated day at {args.retention_days} days "
             f"(llmq.worker.retention.purge), on {kind}"
             + (" with a plain VACUUM of the purged tables after each simulated day, as "
                "autovacuum would run (off on this machine's server)" if kind == "PostgreSQL"
                else "") + f". Requests stay at most {bound} (retention + 1 days of batches).")
    print(notes)
    if args.record:
        record(f"Retention soak, {kind} (bench/retention.py)", table, notes)


if __name__ == "__main__":
    main()
