"""Named failure points, after TiKV's fail-rs and etcd's gofail: the places in production
code where a fault test makes a real failure happen, all declared here. Every point is inert
unless the ``LLMQ_FAILPOINTS`` environment variable arms it, as ``point=MARKER`` (several
joined by ``;``): an armed point fires for the requests whose input contains MARKER. Nothing
but the fault tests sets it."""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

ENV = "LLMQ_FAILPOINTS"
EXIT_CRASHED = 70  # what a worker killed by its engine exits with (EX_SOFTWARE)
POINTS = {
    # a worker about to hand a request to its engine exits at once, as on a segfault
    "request.crash": "the process exits with code 70 before the request runs",
    # the engine's next step never returns, as on a hung kernel, until the heartbeat thread
    # sees no step for LLMQ_ENGINE_STALL_SECONDS and exits the worker
    "request.wedge": "the engine that runs the request stops stepping for good",
}


class FailpointError(ValueError):
    pass


@functools.cache
def armed() -> dict[str, str]:
    """The armed points and their markers, read once per process."""
    points: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in os.environ.get(ENV, "").split(";"))):
        name, sep, marker = item.partition("=")
        if name not in POINTS or not sep or not marker:
            raise FailpointError(f"{ENV}: {item!r} is not point=MARKER with a point of "
                                 f"{', '.join(POINTS)}")
        points[name] = marker
    return points


def request_starting(request_id: str, text: str, engine: Any) -> None:
    """The point where a worker hands a request (its input as ``text``) to ``engine``."""
    points = armed()
    if not points:
        return
    if "request.crash" in points and points["request.crash"] in text:
        log.critical("failpoint request.crash: request %s; exiting", request_id)
        logging.shutdown()
        os._exit(EXIT_CRASHED)
    if "request.wedge" in points and points["request.wedge"] in text:
        log.critical("failpoint request.wedge: request %s wedges the engine", request_id)
        engine.runner.execute = _never_returns


def _never_returns(*_: object) -> Any:
    threading.Event().wait()
