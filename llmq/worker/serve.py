"""The long-running processes an operator starts: a worker (one engine, fed by its
variant's queues) and beat (the scheduler of the nightly pipelines)."""

from __future__ import annotations

from collections.abc import Callable

from llmq.db.migrate import ensure_schema
from llmq.settings import get_settings
from llmq.worker import runtime
from llmq.worker.celery_app import app, worker_queues
from llmq.worker.liveness import Liveness


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
    liveness = Liveness(ident, engine, settings).start()
    try:
        app.worker_main([
            "worker", "--pool=threads", f"--concurrency={threads}", f"--queues={queues}",
            f"--loglevel={loglevel}", f"--hostname=llmq-{ident.device}-{ident.pid}@%h",
            "--without-gossip", "--without-mingle",
        ])
    finally:
        liveness.stop()
        runtime.shutdown()


def run_beat(loglevel: str = "INFO") -> None:
    app.Beat(loglevel=loglevel, schedule="llmq-beat-schedule").run()
