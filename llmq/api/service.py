"""What the CLI and the HTTP API do, as functions: rows first, then messages that carry ids.
Nothing here imports torch or the engine."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.orm import Session

from llmq.api.inputs import InputFileError, ParsedFile, read_input
from llmq.api.output import openai_line, result_line
from llmq.db import queries
from llmq.db.migrate import ensure_schema
from llmq.db.models import Batch
from llmq.db.session import session_scope
from llmq.settings import Settings, get_settings


class NotFound(LookupError):
    pass


class EnqueueError(RuntimeError):
    pass


@dataclass
class SubmitReport:
    batch_id: str
    accepted: int
    model: str
    rejected: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "accepted": self.accepted, "rejected": self.rejected}


def build_requests(parsed: ParsedFile, defaults: dict[str, Any]) -> list[queries.NewRequest]:
    """Accepted lines with the command's defaults under their own sampling fields, and the
    rejected lines as requests that fail with their reason, all in input order."""
    taken = {a.custom_id for a in parsed.accepted}
    rows = [queries.NewRequest(a.custom_id, a.kind, a.input, {**defaults, **a.params}, a.line)
            for a in parsed.accepted]
    for r in parsed.rejected:
        cid = r.custom_id if r.custom_id and r.custom_id not in taken else f"line-{r.line}"
        while cid in taken:
            cid += "#"
        taken.add(cid)
        rows.append(queries.NewRequest(cid, queries.INVALID_KIND, {}, {}, r.line,
                                        error=r.error))
    rows.sort(key=lambda q: q.line or 0)
    return rows


def request_defaults(settings: Settings, max_tokens: int | None,
                     temperature: float | None) -> dict[str, Any]:
    return {"max_tokens": max_tokens if max_tokens is not None else settings.max_tokens,
            "temperature": temperature if temperature is not None else settings.temperature}


def store_batch(path: str | Path, *, model: str | None = None, device: str = "any",
                priority: str = "normal", name: str | None = None,
                max_tokens: int | None = None, temperature: float | None = None,
                column: str | None = None, strict: bool = False,
                extra_defaults: dict[str, Any] | None = None) -> SubmitReport:
    """Parses the file and writes the batch; no messages yet."""
    settings = get_settings()
    parsed = read_input(path, column)
    if strict and parsed.rejected:
        first = parsed.rejected[0]
        raise InputFileError(f"{path}: {len(parsed.rejected)} bad line(s), nothing submitted; "
                             f"first: {first.error}")
    if not parsed.accepted and not parsed.rejected:
        raise InputFileError(f"{path}: no requests in the file")
    defaults = {**request_defaults(settings, max_tokens, temperature), **(extra_defaults or {})}
    model = model or settings.model
    ensure_schema()
    with session_scope() as session:
        batch_id, ids = queries.create_batch(
            session, requests=build_requests(parsed, defaults), model=model,
            device=device, priority=priority, name=name or Path(path).name,
            source_file=str(Path(path).resolve()))
    rejected = [{"line": r.line, "custom_id": r.custom_id, "error": r.error}
                for r in parsed.rejected]
    return SubmitReport(batch_id, len(parsed.accepted), model, rejected, ids)


def enqueue(batch_id: str, ids: Sequence[int], model: str, device: str, priority: str) -> int:
    """Sends the messages (chunks of request ids) to the queue of the batch's model and
    device, and stamps the requests enqueued."""
    from llmq.worker.celery_app import enqueue_requests

    try:
        return len(enqueue_requests(ids, model, device, priority))
    except Exception as exc:
        with session_scope() as session:
            sent = len(ids) - len(queries.unsent_ids(session, ids))
        raise EnqueueError(
            f"batch {batch_id} is stored but only {sent} of {len(ids)} requests were "
            f"enqueued ({exc}); run `llmq retry {batch_id}` once the broker is reachable"
        ) from exc


def submit(path: str | Path, **kwargs: Any) -> SubmitReport:
    report = store_batch(path, **kwargs)
    enqueue(report.batch_id, report.request_ids, report.model, kwargs.get("device", "any"),
            kwargs.get("priority", "normal"))
    return report


def _batch(session: Session, batch_id: str) -> Batch:
    batch = queries.get_batch(session, batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    return batch


def status(batch_id: str) -> dict[str, Any]:
    ensure_schema()
    with session_scope() as session:
        return queries.batch_summary(session, _batch(session, batch_id))


def list_status(limit: int = 20) -> list[dict[str, Any]]:
    ensure_schema()
    with session_scope() as session:
        return [queries.batch_summary(session, b) for b in queries.list_batches(session, limit)]


def cancel(batch_id: str) -> int:
    with session_scope() as session:
        _batch(session, batch_id)
        return queries.cancel_batch(session, batch_id)


def retry(batch_id: str, include_cancelled: bool = False) -> int:
    with session_scope() as session:
        batch = _batch(session, batch_id)
        ids = queries.retry_batch(session, batch_id, include_cancelled)
        model, device, priority = batch.model, batch.device, batch.priority
    if ids:
        enqueue(batch_id, ids, model, device, priority)
    return len(ids)


def result_lines(batch_id: str, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    line = openai_line if fmt == "openai" else result_line
    with session_scope() as session:
        _batch(session, batch_id)
        for req, res in queries.result_rows(session, batch_id):
            yield line(req, res)


def write_results(batch_id: str, out: TextIO, fmt: str = "jsonl") -> int:
    n = 0
    for item in result_lines(batch_id, fmt):
        out.write(json.dumps(item, ensure_ascii=False) + "\n")
        n += 1
    return n


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)}


def stats(batch_id: str | None = None) -> dict[str, Any]:
    """Throughput and latency percentiles, from the database alone."""
    ensure_schema()
    with session_scope() as session:
        if batch_id:
            _batch(session, batch_id)
        rows = queries.timing_rows(session, batch_id)
    ms = lambda a, b: (b - a).total_seconds() * 1000.0  # noqa: E731
    tokens = sum(r[4] for r in rows)
    span = None
    if rows:
        span = (max(r[3] for r in rows) - min(r[1] for r in rows)).total_seconds()
    return {
        "batch_id": batch_id,
        "succeeded": len(rows),
        "completion_tokens": tokens,
        "wall_seconds": round(span, 3) if span is not None else None,
        "tokens_per_s": round(tokens / span, 1) if span else None,
        "queue_wait_ms": _percentiles(sorted(r[5] for r in rows)),
        "time_to_first_token_ms": _percentiles(sorted(ms(r[0], r[2]) for r in rows)),
        "total_ms": _percentiles(sorted(ms(r[0], r[3]) for r in rows)),
    }


# --- pipeline runs ------------------------------------------------------------------------

def pipeline_status(run_id: str, documents: bool = False) -> dict[str, Any]:
    from llmq.worker.pipeline import store

    with session_scope() as session:
        info = store.run_summary(session, store.get_run(session, run_id))
        if documents:
            info["document_states"] = store.run_documents(session, run_id)
        return info


def pipeline_runs(limit: int = 20) -> list[dict[str, Any]]:
    from llmq.worker.pipeline import store

    ensure_schema()
    with session_scope() as session:
        return [store.run_summary(session, r) for r in store.list_runs(session, limit)]


def pipeline_summaries(run_id: str) -> list[dict[str, Any]]:
    from llmq.worker.pipeline import store

    with session_scope() as session:
        store.get_run(session, run_id)
        return store.run_summaries(session, run_id)
