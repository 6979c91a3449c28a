"""The reaper and the reconciler: the database is the truth, a message only a hint to look
at it, so every accepted request ends even when a worker dies or the broker loses messages.

- The reaper hands the running requests of a process whose heartbeat went stale
  (``LLMQ_WORKER_TIMEOUT``) back to the queue, with fresh messages; attempts still count, and
  a request that used them all fails instead.
- The reconciler re-sends queued requests whose messages were lost: all of them when the
  broker's sentinel key vanished (a Redis restart without persistence, a FLUSHALL, a
  failover), and otherwise those queued longer than ``LLMQ_RESEND_AFTER`` while their queue
  is empty (a failed send, a retry that ran out, a message dropped).

A request sent twice costs one look: claims take only queued requests. Torch-free, so that
``llmq retry`` can reap too. Every worker runs them on a ``Sweeper`` thread, apart from its
heartbeat (heartbeat.py), which ``llmq run`` keeps without sweeping."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from llmq.db import pipeline as runs
from llmq.db import workers as rows
from llmq.db.models import utcnow
from llmq.db.openai_batches import expire_due
from llmq.db.session import session_scope
from llmq.settings import Settings
from llmq.worker import broker
from llmq.worker.celery_app import PRIORITIES, request_queue
from llmq.worker.dispatch import send_advance, send_routes
from llmq.worker.retention import expire_files, retain

log = logging.getLogger(__name__)

# a submit writes its rows, then sends: give it that long before its rows count as unsent
SEND_GRACE = timedelta(seconds=30)


def reap(settings: Settings) -> int:
    """Requests of silent processes back to the queue; returns how many were sent again."""
    cutoff = utcnow() - timedelta(seconds=settings.worker_timeout)
    with session_scope() as session:
        stale = rows.stale_workers(session, cutoff)
        ids = rows.reclaim(session, cutoff, settings.max_attempts)
        groups = rows.routes(session, ids)
    if stale or ids:
        log.warning("reaper: %d request(s) handed back to the queue (silent: %s)", len(ids),
                    ", ".join(stale) or "none")
    return send_routes(groups)


def reconcile(settings: Settings) -> int:
    """Re-sends queued requests whose messages were lost; returns how many were sent."""
    lost_all = broker.keep_sentinel(settings.broker_url)
    now = utcnow()
    with session_scope() as session:
        unsent = rows.routes(session, rows.never_sent(session, now - SEND_GRACE))
        if lost_all:
            stale = rows.routes(session, rows.sent_before(session, now))
        else:
            stale = rows.routes(session, rows.sent_before(
                session, now - timedelta(seconds=settings.resend_after)))
    if not lost_all:  # a message still waiting in its queue is not lost
        steps = sorted(set(PRIORITIES.values()))
        stale = {key: ids for key, ids in stale.items() if broker.queue_depth(
            settings.broker_url, [request_queue(key[1], key[0])], steps) == 0}
    sent = send_routes(unsent) + send_routes(stale)
    if sent:
        log.warning("reconciler: sent %d queued request(s) again%s", sent,
                    " (the broker lost its messages)" if lost_all else "")
    return sent


def redrive(settings: Settings) -> list[str]:
    """Sends a new driver chain to every running pipeline run that no driver has looked at
    for LLMQ_RESEND_AFTER seconds (a live chain looks at least twice as often); returns
    their ids."""
    before = utcnow() - timedelta(seconds=settings.resend_after)
    with session_scope() as session:
        stranded = runs.undriven_runs(session, before)
    for run_id in stranded:
        try:
            send_advance(run_id)
            log.warning("pipeline run %s had no driver: sent a new one", run_id)
        except Exception:
            log.exception("could not send a driver for pipeline run %s", run_id)
    return stranded


def expire() -> list[str]:
    """Ends the unfinished requests of HTTP batches whose completion window has passed
    (their running requests leave their engines at the next step, as on a cancel)."""
    with session_scope() as session:
        expired = expire_due(session)
    for batch_id in expired:
        log.warning("batch %s expired: its completion window passed", batch_id)
    return expired


def hand_back(worker: str) -> int:
    """Sends again what ``worker`` (a label) handed back as it stopped (a shutdown's
    unfinished requests), at once rather than at the next reconcile."""
    with session_scope() as session:
        groups = rows.routes(session, rows.released_by(session, worker))
    sent = send_routes(groups)
    if sent:
        log.warning("%d unfinished request(s) handed back to the queue", sent)
    return sent


def sweep(settings: Settings) -> None:
    reap(settings)
    reconcile(settings)
    redrive(settings)
    expire()
    expire_files()
    retain(settings)


class Sweeper:
    """A worker's sweep, every ``reaper_seconds`` from its start (the replacement of a dead
    worker sweeps at once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                sweep(self.settings)
            except Exception:  # the database or the broker is away: try again next time
                log.exception("sweep failed")
            if self._stop.wait(self.settings.reaper_seconds):
                return
