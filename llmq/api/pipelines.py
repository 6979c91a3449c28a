"""The pipeline's service functions: start a run and drive it, or read its state. The CLI
and the HTTP API call these; the queries live in llmq.db.pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmq.db import pipeline as pipeline_store
from llmq.db.migrate import ensure_schema
from llmq.db.session import session_scope
from llmq.settings import get_settings


def start_pipeline(source: str, *, name: str | None = None, model: str | None = None,
                   chunk_tokens: int | None = None, overlap: int | None = None,
                   local: bool = False, slots: int | None = None, wait: bool = False,
                   on_level: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Opens a run over SOURCE's new, changed or failed documents and drives it: here on the
    embedded engine (``local``), or by handing it to the workers (and, with ``wait``, polling
    until it completes). Returns the run's status."""
    from llmq.worker.dispatch import send_advance
    from llmq.worker.pipeline.run import run_local, start_run

    run_id = start_run(source, name=name, model=model, chunk_tokens=chunk_tokens,
                       overlap_tokens=overlap)
    info = pipeline_status(run_id)
    if info["state"] != "running":
        return info
    if local:
        run_local(run_id, slots, on_level=on_level)
    else:
        send_advance(run_id)
        while wait and pipeline_status(run_id)["state"] == "running":
            time.sleep(1.0)
    return pipeline_status(run_id)


def pipeline_status(run_id: str, documents: bool = False) -> dict[str, Any]:
    with session_scope() as session:
        info = pipeline_store.run_summary(session, pipeline_store.get_run(session, run_id))
        if documents:
            info["document_states"] = pipeline_store.run_documents(session, run_id)
        return info


def pipeline_runs(limit: int = 20) -> list[dict[str, Any]]:
    ensure_schema()
    with session_scope() as session:
        return [pipeline_store.run_summary(session, r)
                for r in pipeline_store.list_runs(session, limit)]


def pipeline_summaries(run_id: str) -> list[dict[str, Any]]:
    with session_scope() as session:
        pipeline_store.get_run(session, run_id)
        return pipeline_store.run_summaries(session, run_id)


def pipeline_schedule() -> dict[str, Any]:
    """What ``llmq beat`` runs, and when (the cron expression's timezone is UTC)."""
    from llmq.worker.celery_app import cron_schedule

    settings = get_settings()
    schedule = cron_schedule(settings.pipeline_cron)
    due = schedule.remaining_estimate(schedule.now())
    return {"cron": settings.pipeline_cron, "next_in_seconds": int(due.total_seconds()),
            "timezone": str(schedule.tz or "UTC"), "default_model": settings.model,
            "pipelines": settings.pipelines}
