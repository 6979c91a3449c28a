"""What the CLI does, as functions: the one façade over the database, the queues and the
engine, so that no command runs a query or sends a task itself. Submitting writes rows first,
then messages that carry ids. Nothing here imports torch at import time: the functions that
run a model import the worker side inside themselves."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.orm import Session

from llmq.api.inputs import (
    Accepted,
    InputFileError,
    InputLimits,
    Rejected,
    chunked,
    iter_input,
)
from llmq.api.output import openai_line, percentiles, result_line
from llmq.contract import PRIORITY_RANKS, RequestKind, SamplingParams, defaults_from
from llmq.db import queries
from llmq.db.migrate import ensure_schema, upgrade
from llmq.db.models import Batch
from llmq.db.session import DatabaseUrlError as DatabaseUrlError  # for the command line
from llmq.db.session import session_scope
from llmq.settings import get_settings, redact_url


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


STORE_CHUNK = 2000  # lines parsed, stored (and sent) together: what submit holds at once


def to_new_request(item: Accepted | Rejected, defaults: dict[str, Any]) -> queries.NewRequest:
    """An accepted line with its complete sampling parameters (the line's own fields over
    the command's defaults), or a rejected one as a request that fails with its reason."""
    if isinstance(item, Rejected):
        return queries.NewRequest(item.key, RequestKind.INVALID, {}, {}, item.line,
                                  error=item.error)
    params = SamplingParams.from_stored({**defaults, **item.params}).stored()
    return queries.NewRequest(item.custom_id, item.kind, item.input, params, item.line)


def store_batch(path: str | Path, *, model: str | None = None, device: str = "any",
                priority: str = "normal", name: str | None = None,
                max_tokens: int | None = None, temperature: float | None = None,
                column: str | None = None, strict: bool = False,
                extra_defaults: dict[str, Any] | None = None,
                on_stored: Callable[[list[int]], None] | None = None,
                notify_url: str | None = None) -> SubmitReport:
    """Parses the file and writes the batch (``store_requests``); its end is announced to
    ``notify_url`` (signed with LLMQ_WEBHOOK_SECRET) and to the webhooks of batches made
    without a key."""
    settings = get_settings()
    if notify_url is not None:
        check_notify_url(notify_url)
    limits = InputLimits.of(settings)
    defaults = request_defaults(max_tokens, temperature, extra_defaults)
    if strict:  # a first pass: nothing is stored unless every line is good
        bad = [r for r in iter_input(path, column, limits) if isinstance(r, Rejected)]
        if bad:
            raise InputFileError(f"{path}: {len(bad)} bad line(s), nothing submitted; "
                                 f"first: {bad[0].error}")
    records = iter_input(path, column, limits)
    first = next(records, None)
    if first is None:
        raise InputFileError(f"{path}: no requests in the file")
    model = model or settings.model
    ensure_schema()
    with session_scope() as session:
        batch_id = queries.add_batch(session, model=model, device=device, priority=priority,
                                     name=name or Path(path).name,
                                     source_file=str(Path(path).resolve()))
    report = store_requests(batch_id, model, itertools.chain([first], records), defaults,
                            on_stored)
    with session_scope() as session:
        queries.mark_stored(session, batch_id, notify_url)
    return report


def check_notify_url(url: str) -> None:
    """``--notify URL``: refused before anything is stored when it could not be sent."""
    from llmq.worker.webhooks.send import RefusedUrl, check_secret, resolve

    settings = get_settings()
    try:
        if not settings.webhook_secret:
            raise RefusedUrl("--notify needs LLMQ_WEBHOOK_SECRET, the secret that signs its "
                             "deliveries (`llmq webhooks secret` makes one)")
        check_secret(settings.webhook_secret)
        resolve(url, settings.webhooks_allow_private)
    except RefusedUrl as exc:
        raise InputFileError(str(exc)) from None


def request_defaults(max_tokens: int | None = None, temperature: float | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling fields a line that sets none gets: the settings' and the command's."""
    defaults = {**defaults_from(get_settings(), max_tokens=max_tokens, temperature=temperature),
                **(extra or {})}
    try:  # each line's fields are checked already; the defaults, once here
        SamplingParams.from_stored(defaults)
    except ValueError as exc:
        raise InputFileError(f"request defaults: {exc}") from None
    return defaults


def store_requests(batch_id: str, model: str, records: Iterator[Accepted | Rejected],
                   defaults: dict[str, Any],
                   on_stored: Callable[[list[int]], None] | None = None) -> SubmitReport:
    """Writes judged lines into an existing batch, ``STORE_CHUNK`` per transaction, so a
    file of any length needs memory for one chunk only (and for its rejected lines'
    reasons). ``on_stored`` gets the ids of each stored chunk's runnable requests."""
    report = SubmitReport(batch_id, 0, model)
    for chunk in chunked(records, STORE_CHUNK):
        with session_scope() as session:
            ids = queries.add_requests(session, batch_id, model,
                                       [to_new_request(r, defaults) for r in chunk])
        report.accepted += sum(isinstance(r, Accepted) for r in chunk)
        report.rejected += [{"line": r.line, "custom_id": r.custom_id, "error": r.error}
                            for r in chunk if isinstance(r, Rejected)]
        report.request_ids += ids
        if on_stored is not None:
            on_stored(ids)
    return report


def enqueue(batch_id: str, ids: Sequence[int], model: str, device: str, priority: str) -> int:
    """Sends the messages (chunks of request ids) to the queue of the batch's model and
    device, and stamps the requests enqueued."""
    from llmq.worker.dispatch import enqueue_requests

    try:
        return len(enqueue_requests(ids, model, device, priority))
    except Exception as exc:
        raise _not_all_sent(batch_id, ids, exc) from exc


def _not_all_sent(batch_id: str, ids: Sequence[int], exc: Exception) -> EnqueueError:
    with session_scope() as session:
        sent = len(ids) - len(queries.unsent_ids(session, ids))
    return EnqueueError(
        f"batch {batch_id} is stored but only {sent} of {len(ids)} requests were enqueued "
        f"({exc}); run `llmq retry {batch_id}` once the broker is reachable")


class Sender:
    """Sends each stored chunk's messages as soon as it is stored, so workers start while
    the rest is still being read. A broker failure stops the sending, not the storing:
    ``check`` then says how much went out (``llmq retry`` sends the rest)."""

    def __init__(self, model: str, device: str, priority: str) -> None:
        self.model, self.device, self.priority = model, device, priority
        self.failure: Exception | None = None

    def __call__(self, ids: list[int]) -> None:
        from llmq.worker.dispatch import enqueue_requests

        if ids and self.failure is None:
            try:
                enqueue_requests(ids, self.model, self.device, self.priority)
            except Exception as exc:  # stop sending; keep storing
                self.failure = exc

    def check(self, report: SubmitReport) -> None:
        if self.failure is not None:
            raise _not_all_sent(report.batch_id, report.request_ids,
                                self.failure) from self.failure


def submit(path: str | Path, *, device: str = "any", priority: str = "normal",
           **kwargs: Any) -> SubmitReport:
    """Stores the file and sends its messages as it goes (``Sender``)."""
    sender = Sender(kwargs.get("model") or get_settings().model, device, priority)
    report = store_batch(path, device=device, priority=priority, on_stored=sender, **kwargs)
    sender.check(report)
    return report


def run_here(report: SubmitReport, slots: int | None = None,
             on_result: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Runs a stored batch to the end in this process (``llmq run``, the embedded default);
    returns how many requests ended in each state."""
    from llmq.worker.embedded import run_batch

    with session_scope() as session:  # handed to this process: no reconciler sends them
        queries.mark_enqueued(session, report.request_ids)
    return run_batch(report.request_ids, report.model, slots, on_result=on_result)


class GenerationFailed(RuntimeError):
    pass


def generate(prompt: str, *, model: str | None = None, max_tokens: int | None = None,
             temperature: float | None = None, seed: int | None = None,
             system: str | None = None, raw: bool = False,
             on_text: Callable[[str], None] | None = None) -> str:
    """One completion in this process, nothing stored: PROMPT as a user message (after
    ``system``), or as plain text with ``raw``."""
    from llmq.worker.embedded import generate as generate_here

    settings = get_settings()
    params = SamplingParams.from_stored(defaults_from(
        settings, max_tokens=max_tokens, temperature=temperature, seed=seed))
    if raw:
        result = generate_here(model or settings.model, params, prompt=prompt, on_text=on_text)
    else:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        result = generate_here(model or settings.model, params, messages=messages,
                               on_text=on_text)
    if result.error:
        raise GenerationFailed(result.error)
    return result.text


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


def purge(older_than: str | None, batch_ids: Sequence[str] = (),
          dry_run: bool = False) -> dict[str, Any]:
    """Deletes finished batches (llmq.worker.retention): those older than ``older_than``
    (``30d``, ``12h``; a ValueError names a bad one) and those named; a named batch still
    running is refused (a LookupError) before anything is deleted."""
    from llmq.worker import retention

    try:
        age = retention.parse_age(older_than) if older_than else None
    except ValueError as exc:
        raise InvalidAge(str(exc)) from None
    return retention.purge(age, tuple(batch_ids), dry_run).as_dict()


class InvalidAge(ValueError):
    """An age (``llmq purge --older-than``) that is not a count of s, m, h or d."""


def retry(batch_id: str, include_cancelled: bool = False) -> int:
    """Sends the batch's failed (and, if asked, cancelled) requests again, and every queued
    one; first, requests held by silent workers go back to the queue (the reaper's sweep)."""
    from llmq.worker.reaper import reap

    ensure_schema()
    reap(get_settings())
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
    classes = sorted({r[6] for r in rows}, key=lambda p: -PRIORITY_RANKS.get(p, 0))
    by_priority = {p: {"succeeded": len(mine),
                       "time_to_first_token_ms": percentiles(sorted(ms(r[0], r[2])
                                                                    for r in mine)),
                       "total_ms": percentiles(sorted(ms(r[0], r[3]) for r in mine))}
                   for p in classes for mine in [[r for r in rows if r[6] == p]]}
    return {
        "batch_id": batch_id,
        "succeeded": len(rows),
        "completion_tokens": tokens,
        "wall_seconds": round(span, 3) if span is not None else None,
        "tokens_per_s": round(tokens / span, 1) if span else None,
        "queue_wait_ms": percentiles(sorted(r[5] for r in rows)),
        "time_to_first_token_ms": percentiles(sorted(ms(r[0], r[2]) for r in rows)),
        "total_ms": percentiles(sorted(ms(r[0], r[3]) for r in rows)),
        "by_priority": by_priority,
    }


# --- operators ------------------------------------------------------------------------------

def upgrade_database(revision: str = "head") -> str:
    """Applies migrations; returns the database's URL, password hidden."""
    upgrade(revision=revision)
    return redact_url(get_settings().database_url)


def run_worker(device: str, model: str | None = None, slots: int | None = None,
               concurrency: int | None = None, loglevel: str = "INFO",
               announce: Callable[[str], None] = print) -> None:
    """Serves ``model`` on this machine until stopped (loads torch)."""
    from llmq.worker.serve import run_worker as serve

    serve(device, model, slots, concurrency, loglevel, announce)


def run_beat(loglevel: str = "INFO") -> None:
    from llmq.worker.serve import run_beat as beat

    beat(loglevel)
