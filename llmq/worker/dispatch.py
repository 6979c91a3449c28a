"""Every message llmq sends to the broker, and the stamps that go with them: generation
messages (request ids only; the requests stamped enqueued once sent) and the pipeline's
driver chain. Nothing else in llmq calls ``send_task``. Torch-free: the CLI and the HTTP
API send through here too."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from llmq.db import pipeline as runs
from llmq.db import queries
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker import broker
from llmq.worker.celery_app import (
    CONTROL_QUEUE,
    PRIORITIES,
    TASK_PIPELINE_ADVANCE,
    TASK_RUN_REQUESTS,
    producer_app,
    request_queue,
)

log = logging.getLogger(__name__)

# requests to send, by (model, device, priority): what the reaper and reconciler gather
Routes = dict[tuple[str, str, str], list[int]]


def enqueue_requests(ids: Sequence[int], model: str, device: str = "any",
                     priority: str = "normal", chunk_size: int | None = None) -> list[int]:
    """Sends messages of request ids (``chunk_size`` per message) to the queue of ``model``
    on ``device`` and stamps the requests enqueued; returns the ids sent, which fall short
    of ``ids`` only if sending failed (the exception is raised after stamping what was
    sent)."""
    app = producer_app()
    size = chunk_size or get_settings().chunk_size
    queue = request_queue(device, model)
    sent: list[int] = []
    try:
        if priority == "interactive":  # past the feeders, which bulk work may all hold
            broker.send_express(get_settings().broker_url, queue, list(ids))
            sent = list(ids)
        else:
            with app.producer_or_acquire() as producer:
                for start in range(0, len(ids), size):
                    chunk = list(ids[start:start + size])
                    app.send_task(TASK_RUN_REQUESTS, args=[chunk], queue=queue,
                                  priority=PRIORITIES[priority], producer=producer,
                                  retry=True, retry_policy={"max_retries": 3})
                    sent += chunk
    finally:
        if sent:
            with session_scope() as session:
                queries.mark_enqueued(session, sent)
    return sent


def send_routes(groups: Routes) -> int:
    """Messages for ``groups`` of ids; a group that cannot be sent stays unsent, and the
    next sweep tries again. Returns how many requests were sent."""
    sent = 0
    for (model, device, priority), ids in groups.items():
        try:
            sent += len(enqueue_requests(ids, model, device, priority))
        except Exception:
            log.exception("could not send %d request(s) to %s", len(ids),
                          request_queue(device, model))
    return sent


def send_advance(run_id: str) -> None:
    """Hands the run to the workers: a new driver chain advances it until it is complete
    (any older chain of the run stops at its next look)."""
    with session_scope() as session:
        token = runs.new_driver(session, run_id)
    advance_later(run_id, 0, token, countdown=0)


def advance_later(run_id: str, failures: int, driver: str | None, countdown: float) -> None:
    """The driver chain's next look at the run, ``countdown`` seconds from now."""
    producer_app().send_task(TASK_PIPELINE_ADVANCE, args=[run_id, failures, driver],
                             queue=CONTROL_QUEUE, countdown=countdown or None)
