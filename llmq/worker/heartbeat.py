"""The heartbeat thread of a process that claims requests (a worker, ``llmq run``): it beats
into the database, so that the reaper of any worker can tell when this process is gone, and
exits the process when its engine has work but has stopped stepping, so that it is replaced
and its requests reaped. Sweeping is a worker's other thread (reaper.Sweeper)."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from llmq.db import workers as rows
from llmq.db.session import session_scope
from llmq.settings import Settings

if TYPE_CHECKING:
    from llmq.engine.engine import Engine
    from llmq.worker.processing import WorkerIdentity

log = logging.getLogger(__name__)

EXIT_ENGINE_STALLED = 70  # EX_SOFTWARE


class Heartbeat:
    """A beat every ``heartbeat_seconds``, from before the first claim until ``stop``."""

    def __init__(self, ident: WorkerIdentity, engine: Engine, settings: Settings) -> None:
        self.ident = ident
        self.engine = engine
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()  # registered before the first claim
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops beating and records the stop."""
        self._stop.set()
        self._thread.join()
        try:
            with session_scope() as session:
                rows.mark_stopped(session, self.ident.label)
        except Exception:  # the database is away: the reaper will see to it
            log.exception("could not record this process's stop")

    def beat(self) -> None:
        with session_scope() as session:
            rows.heartbeat(session, name=self.ident.label, host=self.ident.host,
                           pid=self.ident.pid, model=self.ident.model,
                           device=self.ident.device, last_step_at=self.engine.last_step_at,
                           stats=self.engine.scheduler.stats())

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            if self.engine.stalled(self.settings.engine_stall_seconds):
                log.critical("the engine has had work but no step for %ss: exiting so that "
                             "this worker is replaced", self.settings.engine_stall_seconds)
                os._exit(EXIT_ENGINE_STALLED)
            try:
                self.beat()
            except Exception:  # the database is away: try again next beat
                log.exception("heartbeat failed")
