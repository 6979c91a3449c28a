"""Announcing ends and delivering them. Every worker runs a ``Deliverer``: a thread that, about
once a second, turns the batches and pipeline runs that ended into events (one per end, with
a delivery per subscribed receiver) and hands the deliveries that are due to a few sender
threads. Everything lives in the database, so a delivery outlives every process: a receiver
that is down gets it at a later attempt, and a sender that dies mid-send leaves it due again
when its lease passes (at least once; the ``webhook-id`` is the receiver's idempotency key)."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from llmq.db import webhooks as rows
from llmq.db.models import Batch, PipelineRun, utcnow
from llmq.db.session import session_scope
from llmq.settings import Settings

from .send import post

log = logging.getLogger(__name__)

STEP = re.compile(r"(\d+)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
POLL_SECONDS = 1.0


def schedule(settings: Settings) -> list[timedelta]:
    """When each attempt is due, counted from the event (LLMQ_WEBHOOK_RETRY_SCHEDULE)."""
    return [timedelta(seconds=int(n) * UNIT_SECONDS[u])
            for n, u in STEP.findall(settings.webhook_retry_schedule)]


def lease(settings: Settings) -> timedelta:
    """How long a sender holds a delivery: past its attempt's bound, with room to record it."""
    return timedelta(seconds=2 * settings.webhook_timeout + 30)


def announce() -> int:
    """Events for the batches and pipeline runs that ended since the last look; returns how
    many ends were announced (with or without receivers)."""
    announced = 0
    with session_scope() as session:
        batches = [(b.id, b.owner, rows.batch_end(b), b.notify_url)
                   for b in rows.ended_batches(session)]
        runs = rows.ended_runs(session)
    for batch_id, owner, type, notify_url in batches:
        with session_scope() as session:
            if not rows.claim_announcement(session, Batch, batch_id):
                continue
            endpoints = rows.subscribers(session, owner, type)
            urls = [notify_url] if notify_url else []
            if endpoints or urls:
                rows.add_event(session, type, batch_id, endpoints, urls)
        announced += 1
    for run_id, failed in runs:
        type = "pipeline_run.failed" if failed else "pipeline_run.completed"
        with session_scope() as session:
            if not rows.claim_announcement(session, PipelineRun, run_id):
                continue
            endpoints = rows.subscribers(session, None, type)
            if endpoints:
                rows.add_event(session, type, run_id, endpoints, [])
        announced += 1
    return announced


def attempt(delivery_id: int, settings: Settings, final: bool = False) -> rows.Target | None:
    """Sends the delivery once and records how it went; ``final``: no retry whatever happens
    (a test event). The caller holds its lease. Returns what was sent (None: nothing, the
    endpoint being gone or disabled)."""
    with session_scope() as session:
        target = rows.target(session, delivery_id, settings.webhook_secret)
        if target is None:
            rows.give_up(session, delivery_id, rows.DISABLED, "endpoint disabled or deleted")
            return None
        if not target.secrets:
            rows.give_up(session, delivery_id, rows.FAILED,
                         "LLMQ_WEBHOOK_SECRET is not set on the worker: nothing to sign with")
            return None
    started = utcnow()
    outcome = post(target.url, target.event_id, target.body, target.secrets,
                   timeout=settings.webhook_timeout,
                   allow_private=settings.webhooks_allow_private)
    number = target.attempts + 1
    steps = schedule(settings)
    next_at = None
    if outcome.delivered:
        state = rows.DELIVERED
    elif outcome.status_code == 410 and target.endpoint_id is not None:
        state = rows.DISABLED
    elif final or number >= len(steps):
        state = rows.FAILED
    else:  # the gap the schedule puts between this attempt and the next
        state = rows.PENDING
        next_at = utcnow() + (steps[number] - steps[number - 1])
    with session_scope() as session:
        rows.record_attempt(session, delivery_id, number, started, outcome.status_code,
                            outcome.error, outcome.duration_ms, state, next_at)
        if state == rows.DISABLED and target.endpoint_id is not None:
            rows.disable_endpoint(session, target.endpoint_id,
                                  f"its receiver answered 410 Gone at {started:%Y-%m-%d %H:%M}Z")
    if state != rows.DELIVERED:
        log.warning("webhook %s to %s: attempt %d %s (%s)", target.event_id, target.url,
                    number, "failed" if state != rows.PENDING else "failed, will retry",
                    outcome.error)
    return target


class Deliverer:
    """A worker's announcer and senders (``LLMQ_WEBHOOK_SENDERS`` threads)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._free = threading.Semaphore(settings.webhook_senders)
        self._pool = ThreadPoolExecutor(settings.webhook_senders,
                                        thread_name_prefix="llmq-webhook")
        self._thread = threading.Thread(target=self._run, name="llmq-deliverer", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops taking deliveries; those being sent finish (each within its timeout)."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _send(self, delivery_id: int) -> None:
        try:
            attempt(delivery_id, self.settings)
        except Exception:  # the database is away: the lease lapses, and it is due again
            log.exception("webhook delivery %d", delivery_id)
        finally:
            self._free.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                announce()
                busy = self._dispatch()
            except Exception:
                log.exception("webhook sweep failed")
                busy = False
            if not busy:
                self._stop.wait(POLL_SECONDS)

    def _dispatch(self) -> bool:
        """Hands due deliveries to senders as senders come free; whether there may be more
        due at once (then the caller looks again without waiting)."""
        batch = 4 * self.settings.webhook_senders
        with session_scope() as session:
            ids = rows.due(session, batch)
        for delivery_id in ids:
            while not self._free.acquire(timeout=POLL_SECONDS):
                if self._stop.is_set():
                    return False
            with session_scope() as session:
                taken = rows.claim(session, delivery_id, lease(self.settings))
            if taken:
                self._pool.submit(self._send, delivery_id)
            else:
                self._free.release()
        return len(ids) == batch
