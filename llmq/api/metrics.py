"""What /metrics and /readyz report, as service functions: one snapshot of the database's
aggregates, the broker's queue depths and the workers' engine counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from llmq.db import metrics as aggregates
from llmq.db.models import utcnow
from llmq.db.session import get_engine, session_scope
from llmq.settings import get_settings, redact_url


@dataclass
class Snapshot:
    requests: dict[str, int]
    prompt_tokens: int
    generation_tokens: int
    finish_reasons: dict[str, int]
    histograms: dict[str, tuple[list[int], int, float]]
    buckets: tuple[float, ...]
    workers: list[dict[str, Any]]
    queues: dict[str, int] | None = field(default=None)  # None: the broker did not answer
    # prompt and generated tokens per API key id (None: batches made without a key)
    tokens_by_key: dict[str | None, tuple[int, int]] = field(default_factory=dict)
    # time to first token per priority class: (cumulative buckets, count, sum)
    first_token_by_priority: dict[str, tuple[list[int], int, float]] = field(
        default_factory=dict)


def _heard_after() -> datetime:
    """Workers heard from since then are alive (their beats stop counting after
    ``worker_timeout``)."""
    return utcnow() - timedelta(seconds=get_settings().worker_timeout)


def snapshot() -> Snapshot:
    settings = get_settings()
    heard_after = _heard_after()
    with session_scope() as session:
        prompt, completion = aggregates.token_totals(session)
        workers = [{"name": w.name, "model": w.model, "device": w.device, **(w.stats or {})}
                   for w in aggregates.live_workers(session, heard_after)]
        snap = Snapshot(aggregates.requests_by_state(session), prompt, completion,
                        aggregates.finish_reasons(session), aggregates.histograms(session),
                        aggregates.BUCKETS, workers,
                        tokens_by_key=aggregates.tokens_by_key(session),
                        first_token_by_priority=aggregates.first_token_by_priority(session))
    try:
        from llmq.worker.broker import queue_depths

        snap.queues = queue_depths(settings.broker_url)
    except Exception:  # metrics still report what the database knows
        snap.queues = None
    return snap


def ready_workers() -> int | None:
    """Workers that can serve: a worker's first heartbeat comes once its model is loaded, and
    its beats stop counting after ``worker_timeout`` (None: the database did not answer)."""
    try:
        with session_scope() as session:
            return len(aggregates.live_workers(session, _heard_after()))
    except Exception:  # readiness reports the database's error itself
        return None


def readiness() -> dict[str, str]:
    """"ok" or the error of each service llmq needs (the database, the broker)."""
    from llmq.worker.broker import ping

    settings = get_settings()
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = redact_url(f"{type(exc).__name__}: {exc}".splitlines()[0])
    try:
        ping(settings.broker_url)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = redact_url(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return checks
