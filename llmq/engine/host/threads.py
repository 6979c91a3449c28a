"""Which threads compute, and with how many OpenMP threads each.

PyTorch's CPU kernels run on OpenMP, and libgomp gives every thread that starts a parallel
region its own team. Once the threads of all teams outnumber the cores, libgomp stops letting
idle team threads spin and parks them on a futex instead, so every parallel region pays a
wake-up: on a 2-core machine that made small elementwise ops an order of magnitude slower
and a decode step nearly twice as slow. The main thread's team lives as long as the process, so
one multi-threaded op on the main thread is enough to slow every engine thread after it.

The rule: the main thread computes single-threaded, and multi-threaded work runs on one
compute thread at a time (the engine's loop, or ``on_compute_thread`` for one-off work)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


_compute_threads: int | None = None


def set_compute_threads(threads: int | None) -> None:
    """OpenMP threads of each compute thread from now on (None: all cores)."""
    global _compute_threads
    _compute_threads = threads


def compute_threads() -> int:
    return _compute_threads or default_threads()


def keep_main_thread_serial() -> None:
    if threading.current_thread() is threading.main_thread():
        torch.set_num_threads(1)


def on_compute_thread(fn: Callable[[], T], threads: int | None = None) -> T:
    """Runs ``fn`` on a fresh thread with ``threads`` OpenMP threads and returns its result
    (or raises its exception)."""
    box: dict[str, object] = {}

    def run() -> None:
        torch.set_num_threads(threads or compute_threads())
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="llmq-compute")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
