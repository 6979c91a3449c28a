"""Starting a pipeline run, and driving it: in this process (``--local``) or through Celery
(a task that advances the run and re-schedules itself until the run is complete)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmq.db import pipeline as store
from llmq.db.migrate import ensure_schema
from llmq.db.pipeline import create_run, get_run, ingest
from llmq.db.session import session_factory, session_scope
from llmq.settings import get_settings
from llmq.worker.dispatch import enqueue_requests

from .plan import PlanParams
from .sources import read_source

if TYPE_CHECKING:
    from llmq.engine.engine import Engine
    from llmq.worker.processing import WorkerIdentity


def start_run(location: str | Path, name: str | None = None, model: str | None = None,
              chunk_tokens: int | None = None, overlap_tokens: int | None = None) -> str:
    """Reads the source, records its documents, and opens a run over those that need a
    summary. Returns the run id; the run is already completed when nothing needs doing."""
    settings = get_settings()
    plan = PlanParams.from_settings(settings, chunk_tokens, overlap_tokens)
    location = str(Path(location).resolve())
    docs = read_source(location)
    ensure_schema()
    with session_scope() as session:
        source = ingest(session, name or Path(location).name, location, docs)
        run = create_run(session, source, [d.key for d in docs], model or settings.model,
                         {"plan": plan.as_dict()})
        return run.id


def run_local(run_id: str, slots: int | None = None,
              on_level: Callable[[int], None] | None = None) -> None:
    """Drives the run to the end in this process with the embedded engine."""
    from llmq.worker.runtime import load_engine  # torch, only where the run is driven here

    settings = get_settings()
    with session_scope() as session:
        model = get_run(session, run_id).model
        store.new_driver(session, run_id, local=True)  # no sweep sends a chain after it
    engine, ident = load_engine(settings, model, settings.device, slots)
    try:
        drive_here(run_id, engine, ident, on_level)
    finally:
        engine.close()


def drive_here(run_id: str, engine: Engine, ident: WorkerIdentity,
               on_level: Callable[[int], None] | None = None) -> None:
    """Advances the run level by level on ``engine``, in this process, until it is
    complete (``run_local``, and benchmarks that keep one engine across runs)."""
    from llmq.worker.processing import process_ids

    from .advance import advance

    sessions = session_factory()
    while True:
        with sessions.begin() as session:
            step = advance(session, run_id, engine.tokenizer)
        if step.finished:
            return
        ids = step.new_ids + step.unsent_ids
        if on_level is not None:
            on_level(len(ids))
        process_ids(sessions, engine, ids, ident, max_attempts=get_settings().max_attempts)


def advance_and_enqueue(run_id: str) -> bool:
    """One step of a distributed run; True when the run is complete."""
    from llmq.variants.registry import tokenizer_for

    from .advance import advance

    with session_scope() as session:
        model = get_run(session, run_id).model
    with session_factory().begin() as session:
        step = advance(session, run_id, tokenizer_for(model))
    ids = step.new_ids + step.unsent_ids
    if ids:
        enqueue_requests(ids, model)
    return step.finished


def still_driving(run_id: str, token: str | None) -> bool:
    """Records a look by the chain ``token``; False when a newer chain has the run."""
    with session_scope() as session:
        return store.drive(session, run_id, token)
