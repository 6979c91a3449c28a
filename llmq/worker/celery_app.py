"""The Celery application: configuration only (queues, priorities, task names, the beat
schedule). No torch and no database here; ``dispatch`` sends through it."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from llmq.settings import Settings, get_settings

TASK_RUN_REQUESTS = "llmq.run_requests"
TASK_PIPELINE_ADVANCE = "llmq.pipeline_advance"
TASK_PIPELINE_NIGHTLY = "llmq.pipeline_nightly"
# Generation messages go to "<device>.<model>" queues, so that a request only ever reaches a
# worker that holds the variant it names; tasks that need no model (the pipeline's driver,
# beat's nightly start) go to the control queue, which every worker consumes.
CONTROL_QUEUE = "control"
# The Redis transport serves lower numbers first.
# broker steps per priority class (interactive calls share high's queue step; the engine
# ranks them above it: contract.PRIORITY_RANKS)
PRIORITIES = {"interactive": 0, "high": 0, "normal": 3, "low": 6}


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("llmq", broker=s.broker_url, include=["llmq.worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # results live in the SQL database
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # enforced by prefork pools; the threads pool we run ignores these, so the feeder
        # keeps its own deadline (llmq.worker.tasks)
        task_time_limit=s.task_time_limit + 30,
        task_soft_time_limit=s.task_time_limit,
        broker_transport_options={
            "visibility_timeout": s.visibility_timeout,
            "priority_steps": sorted(set(PRIORITIES.values())),
            "sep": ":",
            "queue_order_strategy": "priority",
            # sweep for messages of dead workers often enough to honour a short timeout
            "unacked_restore_interval": max(1, min(10, s.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        task_queues=[Queue(CONTROL_QUEUE)],
        task_default_queue=CONTROL_QUEUE,
        task_default_priority=PRIORITIES["normal"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.conf.beat_schedule = {
        "llmq-pipelines": {"task": TASK_PIPELINE_NIGHTLY, "schedule": cron_schedule(
            s.pipeline_cron), "options": {"queue": CONTROL_QUEUE}},
    }
    return app


def cron_schedule(expr: str) -> crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"LLMQ_PIPELINE_CRON {expr!r}: expected five fields")
    minute, hour, dom, month, dow = fields
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
                   day_of_week=dow)


app = make_app()


@lru_cache(maxsize=4)
def _producer_app(broker_url: str) -> Celery:
    return make_app(get_settings())


def producer_app() -> Celery:
    """An app for sending messages, following the current settings' broker (the module-level
    ``app`` is fixed when the worker imports it)."""
    return _producer_app(get_settings().broker_url)


def request_queue(device: str, model: str) -> str:
    return f"{device}.{model}"


def worker_queues(device: str, model: str) -> list[str]:
    """A worker serves its model's requests for its device and for any device."""
    return [request_queue(device, model), request_queue("any", model), CONTROL_QUEUE]
