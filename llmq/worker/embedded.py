"""The embedded default: stored requests run in this process by a local engine, with the same
request-processing code as a Celery worker and no broker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmq.contract import SamplingParams
from llmq.db.session import session_factory
from llmq.engine.generation import GenerationRequest, GenerationResult
from llmq.settings import get_settings
from llmq.worker import runtime
from llmq.worker.heartbeat import Heartbeat
from llmq.worker.processing import process_ids

FEEDERS = 2  # windows in flight: one fills the engine while the other drains


def run_batch(ids: Sequence[int], model: str, slots: int | None = None,
              on_result: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Runs the stored requests ``ids`` to the end; returns how many ended in each state.
    Like a worker's feeders, two threads hand the engine a window of requests at a time
    (four times its slots), so a file of any length is never claimed, loaded or tokenized
    all at once, and the engine never runs dry between windows."""
    settings = get_settings()
    engine, ident = runtime.load_engine(settings, model, settings.device, slots)
    window = 4 * engine.config.slots
    sessions = session_factory()
    # heartbeats, so that workers sharing this database reap what a killed run held
    heartbeat = Heartbeat(ident, engine, settings).start()
    pool = ThreadPoolExecutor(FEEDERS, thread_name_prefix="llmq-feeder")

    def feed(part: Sequence[int]) -> dict[str, int]:
        return process_ids(sessions, engine, part, ident, max_attempts=settings.max_attempts,
                           on_result=on_result, db_patience=settings.db_outage_seconds)

    outcome: Counter[str] = Counter()
    try:
        for done in pool.map(feed, (ids[i:i + window] for i in range(0, len(ids), window))):
            outcome.update(done)
    except BaseException:  # Ctrl-C: windows not started stay queued, running ones go back
        pool.shutdown(wait=False, cancel_futures=True)
        engine.close()
        raise
    finally:
        pool.shutdown(wait=True)
        heartbeat.stop()
        engine.close()
    return dict(outcome)


def generate(model: str, params: SamplingParams, prompt: str | None = None,
             messages: list[dict[str, Any]] | None = None,
             on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """One request, straight to a one-slot engine (nothing stored), streamed to ``on_text``;
    its layers run uncompiled, as compiling them costs more than it saves on one sequence
    (bench/startup.py)."""
    settings = get_settings()
    engine, _ = runtime.load_engine(settings, model, settings.device, slots=1,
                                    fuse_layers="off")
    request = GenerationRequest(prompt=prompt, messages=messages, params=params)
    try:
        return engine.submit(request, on_token=None if on_text is None else (
            lambda text, _token: on_text(text))).result()
    finally:
        engine.close()
