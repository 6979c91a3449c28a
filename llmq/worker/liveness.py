"""The liveness thread of a process that claims requests: it heartbeats into the database,
sweeps (the reaper and the reconciler, workers only), and exits the process when its engine
has work but has stopped stepping, so that it is replaced and its requests reaped."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from llmq.db import workers as rows
from llmq.db.session import session_scope
from llmq.settings import Settings
from llmq.worker.reaper import expire, reap, reconcile, redrive, send

if TYPE_CHECKING:
    from llmq.engine.engine import Engine
    from llmq.worker.processing import WorkerIdentity

log = logging.getLogger(__name__)

EXIT_ENGINE_STALLED = 70  # EX_SOFTWARE


class Liveness:
    """Heartbeat every ``heartbeat_seconds``; sweep every ``reaper_seconds`` when ``sweep``
    (a worker, which reaches the broker; not ``llmq run``)."""

    def __init__(self, ident: WorkerIdentity, engine: Engine, settings: Settings,
                 sweep: bool = True) -> None:
        self.ident = ident
        self.engine = engine
        self.settings = settings
        self.sweep = sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-liveness", daemon=True)

    def start(self) -> Liveness:
        self.beat()  # registered before the first claim
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops beating; a worker sends what it handed back (a shutdown's unfinished
        requests) again at once, then records its stop."""
        self._stop.set()
        self._thread.join()
        try:
            if self.sweep:
                with session_scope() as session:
                    groups = rows.routes(session, rows.released_by(session, self.ident.label))
                sent = send(groups)
                if sent:
                    log.warning("%d unfinished request(s) handed back to the queue", sent)
            with session_scope() as session:
                rows.mark_stopped(session, self.ident.label)
        except Exception:  # the database is away: the reaper and reconciler will see to it
            log.exception("could not record this worker's stop")

    def beat(self) -> None:
        with session_scope() as session:
            rows.heartbeat(session, name=self.ident.label, host=self.ident.host,
                           pid=self.ident.pid, model=self.ident.model,
                           device=self.ident.device, last_step_at=self.engine.last_step_at,
                           stats=self.engine.scheduler.stats())

    def _run(self) -> None:
        next_sweep = 0.0  # a worker that starts sweeps at once: it may be the replacement
        while True:
            if self.engine.stalled(self.settings.engine_stall_seconds):
                log.critical("the engine has had work but no step for %ss: exiting so that "
                             "this worker is replaced", self.settings.engine_stall_seconds)
                os._exit(EXIT_ENGINE_STALLED)
            try:
                self.beat()
                if self.sweep and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.reaper_seconds
                    reap(self.settings)
                    reconcile(self.settings)
                    redrive(self.settings)
                    expire()
            except Exception:  # the database or the broker is away: try again next beat
                log.exception("liveness: heartbeat or sweep failed")
            if self._stop.wait(self.settings.heartbeat_seconds):
                return
