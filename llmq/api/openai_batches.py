"""The OpenAI Batch API as service functions over ordinary llmq batches: a batch created here
is stored and sent like ``llmq submit`` does, so ``llmq status`` sees it and its requests
share workers with everything else. What OpenAI's object adds (status lifecycle, window,
output and error files) is derived from the batch's rows when it is read."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmq.api.files import InvalidRequest, batch_input, expiry, page, unix, write_generated
from llmq.api.inputs import ENDPOINT_KINDS, InputLimits, iter_input
from llmq.api.output import openai_line
from llmq.api.service import NotFound, Sender, request_defaults, store_requests
from llmq.db import openai_batches as rows
from llmq.db import queries
from llmq.db import variants as variant_rows
from llmq.db.models import Batch, RequestState, utcnow
from llmq.db.session import session_scope
from llmq.settings import get_settings

log = logging.getLogger(__name__)

WINDOW = re.compile(r"([1-9][0-9]{0,5})([smhd])")
MAX_WINDOW_SECONDS = 7 * 86400
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TERMINAL = ("completed", "failed", "expired", "cancelled")


class Backpressure(RuntimeError):
    """Too much is queued already: try again after ``retry_after`` seconds (429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def window_seconds(window: str) -> int:
    """OpenAI takes "24h" only; llmq takes any count of s, m, h or d up to 7 days (a
    shorter window suits quick jobs, and tests)."""
    match = WINDOW.fullmatch(window)
    if not match:
        raise InvalidRequest(f"completion_window {window!r}: expected a duration such as "
                             "24h (or 90m, 3600s, 2d)", "completion_window")
    seconds = int(match[1]) * UNIT_SECONDS[match[2]]
    if seconds > MAX_WINDOW_SECONDS:
        raise InvalidRequest(f"completion_window {window!r}: at most 7d (OpenAI's is 24h)",
                             "completion_window")
    return seconds


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    """OpenAI's rule: at most 16 pairs of strings, keys up to 64, values up to 512 chars."""
    metadata = metadata or {}
    if len(metadata) > 16 or any(
            not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidRequest("metadata: at most 16 string pairs, keys of at most 64 and "
                             "values of at most 512 characters", "metadata")
    return metadata


class _BusyCounts:
    """Queued and running requests, per owner and in all, counted at most every
    ``TTL`` seconds per process: a count scans every queued request (and, on PostgreSQL,
    the dead index entries of those recently finished), too dear for every call; work
    accepted meanwhile is added, so a burst cannot pass a cap by more than other
    processes' share of one period; a refusal is always counted afresh."""

    TTL = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str | None, tuple[float, int]] = {}
        self._everyone: tuple[float, int] = (-1e9, 0)

    def get(self, owner: str | None, fresh: bool = False) -> tuple[int, int]:
        now = time.monotonic()
        with self._lock:
            mine, everyone = self._counts.get(owner), self._everyone
        if fresh or mine is None or now - mine[0] > self.TTL or now - everyone[0] > self.TTL:
            with session_scope() as session:
                mine = (now, rows.busy_requests(session, owner))
                everyone = (now, rows.busy_requests(session, everyone=True))
            with self._lock:
                self._counts[owner], self._everyone = mine, everyone
        return mine[1], everyone[1]

    def add(self, owner: str | None, new: int) -> None:
        with self._lock:
            if owner in self._counts:
                stamp, n = self._counts[owner]
                self._counts[owner] = (stamp, n + new)
            self._everyone = (self._everyone[0], self._everyone[1] + new)


busy_counts = _BusyCounts()


def check_capacity(owner: str | None, new: int) -> None:
    """Refuses work beyond the caps on queued requests (this key's, everyone's); the work
    let through is counted at once."""
    s = get_settings()
    for cap, name in ((s.api_max_queued_per_key, "LLMQ_API_MAX_QUEUED_PER_KEY"),
                      (s.api_max_queued, "LLMQ_API_MAX_QUEUED")):
        if new > cap:
            raise InvalidRequest(f"{new:,} requests at once are over {name} ({cap:,})")
    caps = ((s.api_max_queued_per_key, "LLMQ_API_MAX_QUEUED_PER_KEY"),
            (s.api_max_queued, "LLMQ_API_MAX_QUEUED"))
    counts = busy_counts.get(owner)
    if any(busy + new > cap for busy, (cap, _) in zip(counts, caps, strict=True)):
        counts = busy_counts.get(owner, fresh=True)
    for busy, (cap, name) in zip(counts, caps, strict=True):
        if busy + new > cap:
            raise Backpressure(f"{busy:,} requests are queued or running; {new:,} more would "
                               f"pass {name} ({cap:,}): try again later", s.api_retry_after)
    busy_counts.add(owner, new)


def model_named(name: Any) -> str:
    """The registered variant a request names, else the default model: code written for
    OpenAI names OpenAI's models, and should run unchanged."""
    if isinstance(name, str) and name:
        with session_scope() as session:
            if variant_rows.get(session, name) is not None:
                return name
    return get_settings().model


def _first_model(path: Any) -> str:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    body = json.loads(raw).get("body") or {}
                    return model_named(body.get("model"))
                except (ValueError, AttributeError):
                    break
    return get_settings().model


def idempotency(owner: str | None, header: str | None, fields: dict[str, Any]) -> str:
    """The batch's key: the caller's Idempotency-Key, else the request itself, so that an
    SDK's retry after a timeout finds the first batch instead of making a second (a batch
    of the same file is made again by changing its metadata or passing a new key)."""
    key = header or hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return f"{owner or '-'}:{key}"[:300]


def create_batch(owner: str | None, *, input_file_id: str, endpoint: str,
                 completion_window: str = "24h", metadata: dict[str, Any] | None = None,
                 idempotency_key: str | None = None,
                 output_expires_after: dict[str, Any] | None = None) -> dict[str, Any]:
    """A batch of the lines of ``input_file_id``; ``output_expires_after`` (``{anchor,
    seconds}``) makes its output and error files expire that long after they are written."""
    if endpoint not in ENDPOINT_KINDS:
        raise InvalidRequest(f"endpoint {endpoint!r}: one of {', '.join(ENDPOINT_KINDS)}",
                             "endpoint")
    seconds = window_seconds(completion_window)
    metadata = check_metadata(metadata)
    output_expiry = None if output_expires_after is None else expiry(
        output_expires_after.get("anchor"), output_expires_after.get("seconds"),
        "output_expires_after")
    key = idempotency(owner, idempotency_key, {
        "input_file_id": input_file_id, "endpoint": endpoint,
        "completion_window": completion_window, "metadata": metadata,
        **({"output_expires_after": output_expires_after} if output_expires_after else {})})
    with session_scope() as session:
        twin = rows.find_by_idempotency(session, key)
        if twin is not None:
            return batch_object(session, twin)
    path, lines = batch_input(input_file_id, owner)
    check_capacity(owner, lines)
    model = _first_model(path)
    try:
        with session_scope() as session:
            batch = rows.add_http_batch(
                session, id=queries.new_batch_id(), name=input_file_id, model=model,
                device="any", priority="normal", meta=metadata, owner=owner,
                idempotency_key=key, input_file_id=input_file_id, endpoint=endpoint,
                completion_window=completion_window)
            batch.expires_at = batch.created_at + timedelta(seconds=seconds)
            if output_expiry is not None:
                batch.output_expires_seconds = int(output_expiry.total_seconds())
            batch_id = batch.id
    except IntegrityError:  # the same request, at the same moment
        return get_batch(owner, _twin_id(key))
    _store(batch_id, model, path, endpoint)
    return get_batch(owner, batch_id)


def _twin_id(key: str) -> str:
    with session_scope() as session:
        twin = rows.find_by_idempotency(session, key)
        assert twin is not None
        return twin.id


def _store(batch_id: str, model: str, path: Any, endpoint: str) -> None:
    """Stores and sends every line (as ``llmq submit``); a batch with no valid line fails.
    A broker that fails half-way is not the caller's error: the rows are stored, and the
    workers' reconciler sends what was not sent."""
    s = get_settings()
    limits = InputLimits.of(s)
    sender = Sender(model, "any", "normal")
    report = store_requests(batch_id, model, iter_input(path, None, limits, endpoint),
                            request_defaults(), sender)
    with session_scope() as session:
        rows.mark_validated(session, batch_id, failed=report.accepted == 0)
    if sender.failure is not None:
        log.warning("batch %s stored, but the broker failed (%s): the reconciler will send "
                    "it", batch_id, sender.failure)


def openai_status(batch: Batch, counts: dict[str, int]) -> str:
    if batch.failed_at is not None:
        return "failed"
    if batch.validated_at is None and batch.endpoint is not None:
        return "validating"
    if batch.expired_at is not None:
        return "expired"
    unfinished = counts["queued"] + counts["running"]
    if batch.cancelled_at is not None:
        return "cancelling" if unfinished else "cancelled"
    if unfinished:
        return "in_progress"
    return "completed" if batch.finalized_at is not None else "finalizing"


def batch_object(session: Session, batch: Batch,
                 counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The OpenAI Batch object of ``batch``."""
    counts = counts or queries.batch_counts(session, batch.id)
    status = openai_status(batch, counts)
    errors = None
    if counts["failed"]:
        data = [{"code": "invalid_request", "message": error, "param": None, "line": line}
                for line, _, error in rows.rejected_lines(session, batch.id)]
        errors = {"object": "list", "data": data} if data else None
    ended = batch.finalized_at if status in TERMINAL else None
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint or "/v1/chat/completions",
        "model": batch.model, "errors": errors, "input_file_id": batch.input_file_id or "",
        "completion_window": batch.completion_window or "24h", "status": status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": unix(batch.created_at),
        "in_progress_at": unix(batch.validated_at) if batch.failed_at is None else None,
        "expires_at": unix(batch.expires_at), "finalizing_at": unix(batch.finalized_at),
        "completed_at": unix(ended) if status == "completed" else None,
        "failed_at": unix(batch.failed_at), "expired_at": unix(batch.expired_at),
        "cancelling_at": unix(batch.cancelled_at),
        "cancelled_at": unix(ended) if status == "cancelled" else None,
        "request_counts": {"total": counts["total"], "completed": counts["succeeded"],
                           "failed": counts["failed"] + (
                               counts["cancelled"] if batch.expired_at else 0)},
        "metadata": batch.meta or None,
        "usage": queries.batch_usage(session, batch.id),
    }


def _needs_files(batch: Batch, counts: dict[str, int]) -> bool:
    return batch.finalized_at is None and openai_status(batch, counts) in (
        "finalizing", "cancelled", "expired")


def finalize(batch_id: str, owner: str | None) -> None:
    """Writes the batch's output file (succeeded requests) and error file (the rest) in
    OpenAI's line shape, once; a second finalizer at the same time writes the same files."""
    def lines(succeeded: bool) -> Any:
        with session_scope() as session:
            for req, res in queries.result_rows(session, batch_id):
                if (req.state == RequestState.SUCCEEDED) == succeeded:
                    yield openai_line(req, res)

    with session_scope() as session:
        batch = queries.get_batch(session, batch_id)
        seconds = batch.output_expires_seconds if batch is not None else None
    keep = timedelta(seconds=seconds) if seconds else None
    output = f"file-{batch_id}-output"
    errors = f"file-{batch_id}-errors"
    has_output = write_generated(output, owner, f"{batch_id}_output.jsonl", lines(True), keep)
    has_errors = write_generated(errors, owner, f"{batch_id}_errors.jsonl", lines(False), keep)
    with session_scope() as session:
        rows.mark_finalized(session, batch_id, output if has_output else None,
                            errors if has_errors else None)


def _owned(session: Session, batch_id: str, owner: str | None) -> Batch:
    batch = rows.owned_batch(session, batch_id, owner)
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id}")
    return batch


def get_batch(owner: str | None, batch_id: str) -> dict[str, Any]:
    with session_scope() as session:
        batch = _owned(session, batch_id, owner)
        if (batch.expires_at is not None and batch.expires_at < utcnow()
                and rows.expire_due(session, batch_id=batch_id)):
            session.refresh(batch)
        counts = queries.batch_counts(session, batch_id)
        if not _needs_files(batch, counts):
            return batch_object(session, batch, counts)
    finalize(batch_id, owner)
    with session_scope() as session:
        return batch_object(session, _owned(session, batch_id, owner))


def list_batches(owner: str | None, after: str | None = None, limit: int = 20
                 ) -> dict[str, Any]:
    with session_scope() as session:
        rows.expire_due(session)
    with session_scope() as session:
        batches = rows.list_owned(session, owner, after, limit + 1)
        counts = rows.counts_of(session, [b.id for b in batches])
        due = [b.id for b in batches if _needs_files(b, counts[b.id])]
        if not due:
            return page([batch_object(session, b, counts[b.id]) for b in batches], limit)
    for batch_id in due:
        finalize(batch_id, owner)
    with session_scope() as session:
        batches = rows.list_owned(session, owner, after, limit + 1)
        counts = rows.counts_of(session, [b.id for b in batches])
        return page([batch_object(session, b, counts[b.id]) for b in batches], limit)


def cancel_batch(owner: str | None, batch_id: str) -> dict[str, Any]:
    """Cancels what has not finished (running requests leave their engine at its next
    step); a batch that has ended is returned as it is."""
    with session_scope() as session:
        batch = _owned(session, batch_id, owner)
        if openai_status(batch, queries.batch_counts(session, batch_id)) not in TERMINAL:
            queries.cancel_batch(session, batch_id)
    return get_batch(owner, batch_id)
