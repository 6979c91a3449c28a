"""Celery tasks: thin feeders that hand stored requests to the worker's shared engine."""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import OperationalError

from llmq.db.session import session_factory
from llmq.settings import get_settings
from llmq.worker import runtime
from llmq.worker.celery_app import TASK_RUN_REQUESTS, app
from llmq.worker.processing import process_ids

log = logging.getLogger(__name__)


@app.task(name=TASK_RUN_REQUESTS, acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def run_requests(request_ids: list[int]) -> dict[str, int]:
    """Runs one message's requests. Safe to run twice: claims and result writes are
    conditional, so a redelivered message only finishes what is still unfinished."""
    settings = get_settings()
    engine, ident = runtime.current()
    outcome = process_ids(session_factory(), engine, request_ids, ident,
                          max_attempts=settings.max_attempts,
                          cancel_poll=settings.cancel_poll_seconds,
                          deadline=time.time() + settings.task_time_limit)
    log.info("message of %d requests: %s", len(request_ids), outcome)
    return outcome
