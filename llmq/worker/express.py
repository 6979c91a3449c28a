"""The express lane of interactive requests. A worker's Celery feeders each hold a message
until its requests are done, so while bulk work fills the engine every feeder is busy and a
message of any priority waits in the broker for one of them to free: the engine could
preempt for it, but never sees it. Interactive requests (synchronous completions) therefore
go, as their ids, to a Redis list per request queue (``broker.express_key``) that every
worker of the queue pops on a thread of its own, and run through ``process_ids`` like
everything else: claims, results and the engine's ranks are the same. A worker that dies
after popping loses only the hint: the reaper and the reconciler send the requests again,
as for any lost message."""

from __future__ import annotations

import json
import logging
import threading
import time

from llmq.db.session import session_factory
from llmq.settings import Settings
from llmq.worker import broker
from llmq.worker.processing import WorkerIdentity, process_ids

log = logging.getLogger(__name__)

POP_SECONDS = 1  # how long one BRPOP waits: the stop is seen this often
MAX_RUNNING = 64  # express messages run at once by one worker


class ExpressLane:
    """Pops the express lists of a worker's request queues and runs what it pops."""

    def __init__(self, settings: Settings, engine: object, ident: WorkerIdentity,
                 queues: list[str], publisher: object = None) -> None:
        self.settings, self.engine, self.ident = settings, engine, ident
        self.keys = [broker.express_key(q) for q in queues]
        self.publisher = publisher
        self._stop = threading.Event()
        self._running = threading.Semaphore(MAX_RUNNING)
        self._thread = threading.Thread(target=self._run, name="llmq-express", daemon=True)

    def start(self) -> ExpressLane:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        client = broker.client(self.settings.broker_url)
        while not self._stop.is_set():
            if not self._running.acquire(timeout=POP_SECONDS):
                continue
            try:
                popped = client.brpop(self.keys, timeout=POP_SECONDS)
            except Exception:  # the broker is away: the reconciler sends what waits
                self._running.release()
                log.exception("express lane: could not pop")
                time.sleep(POP_SECONDS)
                continue
            if popped is None:
                self._running.release()
                continue
            ids = [int(i) for i in json.loads(popped[1])]
            threading.Thread(target=self._process, args=(ids,), daemon=True,
                             name="llmq-express-run").start()

    def _process(self, ids: list[int]) -> None:
        s = self.settings
        try:
            process_ids(session_factory(), self.engine, ids, self.ident,  # type: ignore[arg-type]
                        max_attempts=s.max_attempts, cancel_poll=s.cancel_poll_seconds,
                        deadline=time.time() + s.task_time_limit,
                        db_patience=s.db_outage_seconds,
                        publisher=self.publisher)  # type: ignore[arg-type]
        except Exception:  # what it claimed goes back through the reaper
            log.exception("express lane: requests %s", ids)
        finally:
            self._running.release()
