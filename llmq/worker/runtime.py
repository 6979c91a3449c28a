"""The one engine of a worker process, loaded before the first message is taken."""

from __future__ import annotations

import threading

from llmq.settings import Settings
from llmq.worker.engine import Engine, EngineConfig
from llmq.worker.models import resolve_model
from llmq.worker.processing import WorkerIdentity

_lock = threading.Lock()
_engine: Engine | None = None
_identity: WorkerIdentity | None = None


def engine_device(device: str) -> str:
    """The worker's ``cpu|gpu|auto`` in torch's words."""
    return {"gpu": "cuda", "cpu": "cpu"}.get(device, "auto")


def load(settings: Settings, model: str, device: str,
         slots: int | None = None) -> tuple[Engine, WorkerIdentity]:
    """A new engine for ``model``, and who this worker is once it runs."""
    engine = Engine.load(resolve_model(model), EngineConfig(
        num_slots=slots or settings.slots, slot_length=settings.slot_length,
        max_step_tokens=settings.step_tokens, threads=settings.threads,
        device=engine_device(device), compile=settings.compile))
    actual = "gpu" if engine.model.device.type == "cuda" else "cpu"
    return engine, WorkerIdentity.here(actual, model)


def start(settings: Settings, model: str, device: str) -> tuple[Engine, WorkerIdentity]:
    """Loads this process's engine (once)."""
    global _engine, _identity
    with _lock:
        if _engine is None or _identity is None:
            _engine, _identity = load(settings, model, device)
        return _engine, _identity


def current() -> tuple[Engine, WorkerIdentity]:
    if _engine is None or _identity is None:
        raise RuntimeError("this worker has no engine loaded")
    return _engine, _identity


def shutdown() -> None:
    global _engine, _identity
    with _lock:
        if _engine is not None:
            _engine.close()
        _engine = _identity = None
