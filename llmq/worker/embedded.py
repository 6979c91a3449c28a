"""The embedded default: stored requests run in this process by a local engine, with the same
request-processing code as a Celery worker and no broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmq.db.session import session_factory
from llmq.settings import get_settings
from llmq.worker.engine import Engine, EngineConfig
from llmq.worker.processing import WorkerIdentity, process_ids
from llmq.worker.runtime import engine_device, resolve_model


def load_engine(model: str, slots: int | None = None,
                device: str | None = None) -> tuple[Engine, WorkerIdentity]:
    s = get_settings()
    engine = Engine.load(resolve_model(model), EngineConfig(
        num_slots=slots or s.slots, slot_length=s.slot_length, max_step_tokens=s.step_tokens,
        threads=s.threads, device=engine_device(device or s.device)))
    actual = "gpu" if engine.model.device.type == "cuda" else "cpu"
    return engine, WorkerIdentity.here(actual, model)


def run_batch(ids: Sequence[int], model: str, slots: int | None = None,
              on_result: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Runs the stored requests ``ids`` to the end; returns how many ended in each state."""
    engine, ident = load_engine(model, slots)
    try:
        return process_ids(session_factory(), engine, ids, ident,
                           max_attempts=get_settings().max_attempts, on_result=on_result)
    finally:
        engine.close()
