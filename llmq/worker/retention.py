"""``llmq purge`` and ``LLMQ_RETENTION_DAYS`` (the workers' sweep): finished batches older
than a cutoff are deleted with their requests, results and the files they wrote, a batch at a
time and its requests in chunks, so that a purge of a million rows never locks the tables for
long, and a purge cut off half-way leaves nothing that a second run would not finish."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from llmq.db import files as file_rows
from llmq.db import retention as rows
from llmq.db import webhooks as webhook_rows
from llmq.db.migrate import ensure_schema
from llmq.db.models import Batch, utcnow
from llmq.db.session import session_scope
from llmq.settings import Settings, get_settings

log = logging.getLogger(__name__)

AGE = re.compile(r"(\d+)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BATCHES_PER_QUERY = 100
REQUESTS_PER_TRANSACTION = 2000


class StillRunning(LookupError):
    """A batch named for purging still has queued or running requests."""


class NoSuchBatch(LookupError):
    pass


@dataclass
class PurgeReport:
    batches: int = 0
    requests: int = 0
    files: int = 0
    webhook_events: int = 0  # with their deliveries and attempts
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s``."""
    match = AGE.fullmatch(text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"{text!r}: expected an age such as 30d, 12h, 90m or 3600s")
    return timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])


def purge(older_than: timedelta | None = None, batch_ids: tuple[str, ...] = (),
          dry_run: bool = False, now: datetime | None = None) -> PurgeReport:
    """Deletes the finished batches older than ``older_than`` (by creation and by their last
    request's end, as of ``now``: the clock, unless a simulation sets it), and those named
    in ``batch_ids`` (refused, before anything is deleted,
    for one that is still running); ``dry_run`` counts what would go."""
    ensure_schema()
    with session_scope() as session:
        for batch_id in batch_ids:
            if session.get(Batch, batch_id) is None:
                raise NoSuchBatch(f"no batch {batch_id!r}")
            if rows.unfinished(session, batch_id):
                raise StillRunning(f"batch {batch_id} still has queued or running requests "
                                   f"(or its pipeline run is running): cancel it first "
                                   f"(llmq cancel {batch_id})")
    report = PurgeReport(dry_run=dry_run)
    for batch_id in batch_ids:
        _purge_one(batch_id, report)
    if older_than is not None:
        cutoff = (now or utcnow()) - older_than
        kept: set[str] = set()  # chosen but still there (a dry run's, or running again)
        while True:
            with session_scope() as session:
                page = [b for b in rows.finished_before(session, cutoff,
                                                        BATCHES_PER_QUERY + len(kept))
                        if b not in kept]
            if not page:
                break
            for batch_id in page:
                if not _purge_one(batch_id, report):
                    kept.add(batch_id)
        if not dry_run:
            report.webhook_events += _purge_events(cutoff)
    return report


def _purge_events(cutoff: datetime) -> int:
    """Webhook events older than ``cutoff`` whose deliveries have ended, in chunks."""
    gone = 0
    while True:
        with session_scope() as session:
            deleted = webhook_rows.delete_events_before(session, cutoff)
        gone += deleted
        if not deleted:
            return gone


def _purge_one(batch_id: str, report: PurgeReport) -> bool:
    """Deletes (or, in a dry run, counts) one batch; whether it is gone."""
    if report.dry_run:
        with session_scope() as session:
            report.requests += rows.count_requests(session, [batch_id])
            batch = session.get(Batch, batch_id)
            if batch is not None:
                report.files += sum(1 for f in (batch.output_file_id, batch.error_file_id)
                                    if f)
        report.batches += 1
        return False
    while True:  # one short transaction per chunk of requests
        with session_scope() as session:
            if rows.unfinished(session, batch_id):  # retried since it was chosen
                log.warning("batch %s runs again: not purged", batch_id)
                return False
            deleted = rows.delete_requests(session, batch_id, REQUESTS_PER_TRANSACTION)
        report.requests += deleted
        if deleted < REQUESTS_PER_TRANSACTION:
            break
    with session_scope() as session:
        if rows.unfinished(session, batch_id):
            return False
        paths = rows.delete_batch(session, batch_id)
    folder = Path(get_settings().files_dir)
    for path in paths:  # after the rows: a file without a row is never served
        (folder / path).unlink(missing_ok=True)
    report.files += len(paths)
    report.batches += 1
    return True


_last_retention: float | None = None


def retain(settings: Settings, every: timedelta = timedelta(hours=1)) -> PurgeReport | None:
    """The workers' sweep: at most once per ``every`` per process, purges the finished
    batches older than ``LLMQ_RETENTION_DAYS`` (none when it is 0)."""
    global _last_retention
    if not settings.retention_days:
        return None
    now = utcnow().timestamp()
    if _last_retention is not None and now - _last_retention < every.total_seconds():
        return None
    _last_retention = now
    report = purge(timedelta(days=settings.retention_days))
    if report.batches:
        log.warning("retention: purged %d finished batch(es) older than %d days (%d requests, "
                    "%d files)", report.batches, settings.retention_days, report.requests,
                    report.files)
    return report


def expire_files(chunk: int = 500) -> int:
    """Deletes the files past their expiry (rows first, then bytes: a file without a row is
    never served); returns how many. Every sweep: the expiry is indexed."""
    gone = 0
    folder = Path(get_settings().files_dir)
    while True:
        with session_scope() as session:
            due = [(f.id, f.path) for f in file_rows.expired(session, chunk)]
            if due:
                file_rows.delete_rows(session, [file_id for file_id, _ in due])
        for _, path in due:
            (folder / path).unlink(missing_ok=True)
        gone += len(due)
        if len(due) < chunk:
            return gone
