"""What /metrics reads from the database: requests by state, tokens, latency histograms
and the workers' engine counters. Each is one aggregate query, run at scrape time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from .models import Batch, Request, Result, Worker

# latency buckets, seconds (batch work waits long: the upper buckets reach a day)
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
           86400.0)
# what each histogram measures, in ms columns of results (as vLLM's metrics of those names)
HISTOGRAMS = {
    "time_to_first_token_seconds": Result.queue_ms + Result.prefill_ms,
    "request_queue_time_seconds": Result.queue_ms,
    "request_prefill_time_seconds": Result.prefill_ms,
    "request_decode_time_seconds": Result.decode_ms,
    "e2e_request_latency_seconds": Result.total_ms,
}


def requests_by_state(session: Session) -> dict[str, int]:
    return {state: n for state, n in session.execute(
        select(Request.state, func.count()).group_by(Request.state))}


def token_totals(session: Session) -> tuple[int, int]:
    prompt, completion = session.execute(select(
        func.coalesce(func.sum(Result.prompt_tokens), 0),
        func.coalesce(func.sum(Result.completion_tokens), 0))).one()
    return int(prompt), int(completion)


def tokens_by_key(session: Session) -> dict[str | None, tuple[int, int]]:
    """Prompt and generated tokens of the results of each key's batches (None: no key)."""
    return {owner: (int(p or 0), int(c or 0)) for owner, p, c in session.execute(
        select(Batch.owner, func.sum(Result.prompt_tokens), func.sum(Result.completion_tokens))
        .select_from(Result).join(Request, Result.request_id == Request.id)
        .join(Batch, Request.batch_id == Batch.id).group_by(Batch.owner))}


def finish_reasons(session: Session) -> dict[str, int]:
    return {reason: n for reason, n in session.execute(
        select(Result.finish_reason, func.count()).group_by(Result.finish_reason))}


def histograms(session: Session, buckets: Sequence[float] = BUCKETS,
               batch_id: str | None = None) -> dict[str, tuple[list[int], int, float]]:
    """Per histogram: cumulative counts per bucket, the count and the sum (seconds); of
    one batch's results, or of all."""
    columns: list[Any] = []
    for expr in HISTOGRAMS.values():
        columns += [func.sum(case((expr <= b * 1000.0, 1), else_=0)) for b in buckets]
        columns.append(func.coalesce(func.sum(expr), 0.0))
    columns.append(func.count())
    stmt = select(*columns).select_from(Result)
    if batch_id is not None:
        stmt = stmt.join(Request, Result.request_id == Request.id).where(
            Request.batch_id == batch_id)
    row = session.execute(stmt).one()
    count = int(row[-1])
    out = {}
    width = len(buckets) + 1
    for i, name in enumerate(HISTOGRAMS):
        part = row[i * width:(i + 1) * width]
        out[name] = ([int(v or 0) for v in part[:-1]], count, float(part[-1]) / 1000.0)
    return out


def first_token_by_priority(session: Session, buckets: Sequence[float] = BUCKETS
                             ) -> dict[str, tuple[list[int], int, float]]:
    """Time to first token per priority class of the requests' batches, as ``histograms``."""
    expr = HISTOGRAMS["time_to_first_token_seconds"]
    columns: list[Any] = [Batch.priority]
    columns += [func.sum(case((expr <= b * 1000.0, 1), else_=0)) for b in buckets]
    columns += [func.coalesce(func.sum(expr), 0.0), func.count()]
    out = {}
    for row in session.execute(select(*columns).select_from(Result)
                               .join(Request, Result.request_id == Request.id)
                               .join(Batch, Batch.id == Request.batch_id)
                               .group_by(Batch.priority)):
        out[row[0]] = ([int(v or 0) for v in row[1:-2]], int(row[-1]), float(row[-2]) / 1000.0)
    return out


def live_workers(session: Session, heard_after: datetime) -> list[Worker]:
    return list(session.execute(select(Worker).where(
        Worker.stopped_at.is_(None), Worker.heartbeat_at >= heard_after)
        .order_by(Worker.name)).scalars())
