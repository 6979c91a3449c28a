"""Loading an engine for a process that serves requests: a worker (its one engine, loaded
before the first message is taken), ``llmq run``, ``llmq generate`` and local pipeline runs
all load through ``load_engine``."""

from __future__ import annotations

import logging
import threading

from llmq.engine.config import EngineConfig, Fusing
from llmq.engine.engine import Engine
from llmq.engine.host.process import configure_process
from llmq.engine.kernels import rotated, timing
from llmq.settings import Settings
from llmq.variants.registry import resolve
from llmq.worker.processing import WorkerIdentity
from llmq.worker.token_stream import Publisher

log = logging.getLogger(__name__)
_lock = threading.Lock()
_engine: Engine | None = None
_identity: WorkerIdentity | None = None
_publisher: Publisher | None = None


def engine_device(device: str) -> str:
    """The worker's ``cpu|gpu|auto`` in torch's words."""
    return {"gpu": "cuda", "cpu": "cpu"}.get(device, "auto")


def load_engine(settings: Settings, model: str, device: str, slots: int | None = None,
                fuse_layers: Fusing = "in_background") -> tuple[Engine, WorkerIdentity]:
    """Sets up the process (threads, allocator, compilation) and loads a new engine for
    ``model``; returns it and who this worker is once it runs. ``fuse_layers``:
    ``EngineConfig``'s."""
    configure_process(settings.threads, settings.compile, settings.cache_dir or None,
                      settings.int8_kernel)
    engine = Engine.load(resolve(model), EngineConfig(
        slots=slots or settings.slots, slot_length=settings.slot_length,
        step_tokens=settings.step_tokens,
        interactive_step_tokens=settings.interactive_step_tokens, threads=settings.threads,
        device=engine_device(device), chat_date=settings.chat_date,
        fuse_layers=fuse_layers), name=model,
        verify=settings.verify_artifacts, cache_dir=settings.cache_dir or None)
    actual = "gpu" if engine.model.device.type == "cuda" else "cpu"
    for warning in (timing.slow_here(engine.model, engine.model.config),
                    timing.coarsened_here(engine.model),
                    rotated.unfused_here(engine.model)):
        if warning:
            log.warning("model %s: %s", model, warning)
    return engine, WorkerIdentity.here(actual, model)


def start(settings: Settings, model: str, device: str) -> tuple[Engine, WorkerIdentity]:
    """Loads this process's engine (once), and its publisher of streamed tokens."""
    global _engine, _identity, _publisher
    with _lock:
        if _engine is None or _identity is None:
            _engine, _identity = load_engine(settings, model, device)
            _publisher = Publisher(settings.broker_url)
        return _engine, _identity


def publisher() -> Publisher | None:
    return _publisher


def current() -> tuple[Engine, WorkerIdentity]:
    if _engine is None or _identity is None:
        raise RuntimeError("this worker has no engine loaded")
    return _engine, _identity


def shutdown() -> None:
    global _engine, _identity, _publisher
    with _lock:
        if _engine is not None:
            _engine.close()
        if _publisher is not None:
            _publisher.close()
        _engine = _identity = _publisher = None
