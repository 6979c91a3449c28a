"""The long-running processes an operator starts: a worker (one engine, fed by its
variant's queues) and beat (the scheduler of the nightly pipelines)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import signals

from llmq.db.migrate import ensure_schema
from llmq.settings import get_settings
from llmq.worker import runtime
from llmq.worker.celery_app import CONTROL_QUEUE, app, worker_queues
from llmq.worker.express import ExpressLane
from llmq.worker.heartbeat import Heartbeat
from llmq.worker.reaper import Sweeper, hand_back
from llmq.worker.webhooks.deliver import Deliverer

log = logging.getLogger(__name__)


def run_worker(device: str, model: str | None = None, slots: int | None = None,
               concurrency: int | None = None, loglevel: str = "INFO",
               announce: Callable[[str], None] = print) -> None:
    """Loads the engine, then consumes ``model``'s queues for this device and for any
    device (plus the control queue) until stopped."""
    settings = get_settings()
    if slots:
        settings = settings.model_copy(update={"slots": slots})
    ensure_schema()
    engine, ident = runtime.start(settings, model or settings.model, device)
    queues = ",".join(worker_queues(ident.device, ident.model))
    threads = concurrency or settings.concurrency or max(
        2, 2 * -(-settings.slots // settings.chunk_size))
    announce(f"llmq worker: {ident.model} on {ident.device}, {settings.slots} slots, "
             f"{threads} feeders, queues {queues}")
    heartbeat = Heartbeat(ident, engine, settings).start()
    sweeper = Sweeper(settings).start()
    deliverer = Deliverer(settings).start()
    express = ExpressLane(settings, engine, ident, [
        q for q in worker_queues(ident.device, ident.model) if q != CONTROL_QUEUE],
        runtime.publisher()).start()
    signals.worker_shutting_down.connect(_hand_back_after(settings.shutdown_grace_seconds),
                                         weak=False)
    try:
        app.worker_main([
            "worker", "--pool=threads", f"--concurrency={threads}", f"--queues={queues}",
            f"--loglevel={loglevel}", f"--hostname=llmq-{ident.device}-{ident.pid}@%h",
            "--without-gossip", "--without-mingle",
        ])
    finally:
        express.stop()
        sweeper.stop()
        deliverer.stop()
        try:
            hand_back(ident.label)
        except Exception:  # the database or broker is away: the reconciler will send them
            log.exception("could not hand back this worker's unfinished requests")
        heartbeat.stop()
        runtime.shutdown()


def _hand_back_after(grace: float) -> Callable[..., None]:
    """On a warm shutdown (SIGTERM, what docker and Kubernetes send), Celery stops taking
    messages and waits for the running ones, which could take as long as the task time
    limit. After ``grace`` seconds the engine is closed instead: what it still runs ends
    with ENGINE_CLOSED, the feeders hand it back to the queue, and the worker exits; its
    ``hand_back`` sends those requests again as it stops."""
    def on_shutdown(sig: str = "", how: str = "", **_: object) -> None:
        log.warning("%s: %s shutdown; unfinished requests go back to the queue in %ss", sig,
                    how, grace)
        timer = threading.Timer(grace, runtime.shutdown)
        timer.daemon = True
        timer.start()
    return on_shutdown


def run_beat(loglevel: str = "INFO") -> None:
    app.Beat(loglevel=loglevel, schedule="llmq-beat-schedule").run()
