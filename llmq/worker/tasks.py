"""Celery tasks: thin feeders that hand stored requests to the worker's shared engine."""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import OperationalError

from llmq.db.session import session_factory
from llmq.settings import get_settings
from llmq.worker.celery_app import (
    TASK_PIPELINE_ADVANCE,
    TASK_PIPELINE_NIGHTLY,
    TASK_RUN_REQUESTS,
    app,
)
from llmq.worker.dispatch import advance_later, send_advance

log = logging.getLogger(__name__)


@app.task(name=TASK_RUN_REQUESTS, acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def run_requests(request_ids: list[int]) -> dict[str, int]:
    """Runs one message's requests. Safe to run twice: claims and result writes are
    conditional, so a redelivered message only finishes what is still unfinished."""
    from llmq.worker import runtime  # the engine (and torch) only where requests run
    from llmq.worker.processing import process_ids

    settings = get_settings()
    engine, ident = runtime.current()
    outcome = process_ids(session_factory(), engine, request_ids, ident,
                          max_attempts=settings.max_attempts,
                          cancel_poll=settings.cancel_poll_seconds,
                          deadline=time.time() + settings.task_time_limit,
                          db_patience=settings.db_outage_seconds,
                          publisher=runtime.publisher())
    log.info("message of %d requests: %s", len(request_ids), outcome)
    return outcome


@app.task(name=TASK_PIPELINE_ADVANCE, acks_late=True, reject_on_worker_lost=True)
def pipeline_advance(run_id: str, failures: int = 0, driver: str | None = None) -> bool:
    """Moves a pipeline run forward, then looks again later until it is complete. Any error
    (the database away, a failed send, a conflict with another driver) only delays the
    next look, with backoff: the chain must not end while the run is running. If it ends
    anyway (the broker away when it reschedules), the sweep sends a new chain
    (reaper.redrive), and this one stops at its next look."""
    from llmq.db.pipeline import RunNotFound
    from llmq.worker.pipeline.run import advance_and_enqueue, still_driving

    settings = get_settings()
    try:
        if not still_driving(run_id, driver):
            log.info("pipeline run %s: a newer driver has taken over", run_id)
            return True
        if advance_and_enqueue(run_id):
            return True
        failures = 0
    except RunNotFound:
        log.error("pipeline run %s does not exist: its driver stops", run_id)
        return True
    except Exception:
        failures += 1
        log.exception("pipeline run %s: advancing failed (%d in a row)", run_id, failures)
    # the longest wait stays under the sweep's patience, so a live chain is never replaced
    longest = min(300.0, settings.resend_after / 2)
    advance_later(run_id, failures, driver,
                  countdown=min(longest, settings.pipeline_poll_seconds * 2 ** min(failures, 8)))
    return False


@app.task(name=TASK_PIPELINE_NIGHTLY)
def pipeline_nightly() -> list[str]:
    """Beat's entry: starts a run of every configured pipeline."""
    from llmq.worker.pipeline.run import start_run

    runs = []
    for cfg in get_settings().pipelines:
        run_id = start_run(cfg["source"], name=cfg.get("name"), model=cfg.get("model"))
        send_advance(run_id)
        runs.append(run_id)
        log.info("pipeline %s: run %s", cfg.get("name") or cfg["source"], run_id)
    return runs
