"""The embedded default: stored requests run in this process by a local engine, with the same
request-processing code as a Celery worker and no broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmq.contract import SamplingParams
from llmq.db.session import session_factory
from llmq.engine.engine import Engine, GenerationRequest, GenerationResult
from llmq.settings import get_settings
from llmq.worker import runtime
from llmq.worker.liveness import Liveness
from llmq.worker.processing import WorkerIdentity, process_ids


def load_engine(model: str, slots: int | None = None) -> tuple[Engine, WorkerIdentity]:
    settings = get_settings()
    return runtime.load(settings, model, settings.device, slots)


def run_batch(ids: Sequence[int], model: str, slots: int | None = None,
              on_result: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Runs the stored requests ``ids`` to the end; returns how many ended in each state."""
    settings = get_settings()
    engine, ident = load_engine(model, slots)
    # heartbeats, so that workers sharing this database reap what a killed run held
    liveness = Liveness(ident, engine, settings, sweep=False).start()
    try:
        return process_ids(session_factory(), engine, ids, ident,
                           max_attempts=settings.max_attempts, on_result=on_result,
                           db_patience=settings.db_outage_seconds)
    finally:
        liveness.stop()
        engine.close()


def generate(model: str, params: SamplingParams, prompt: str | None = None,
             messages: list[dict[str, Any]] | None = None,
             on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """One request, straight to a one-slot engine (nothing stored), streamed to ``on_text``."""
    engine, _ = load_engine(model, slots=1)
    request = GenerationRequest(prompt=prompt, messages=messages, params=params)
    try:
        return engine.submit(request, on_token=None if on_text is None else (
            lambda text, _token: on_text(text))).result()
    finally:
        engine.close()
