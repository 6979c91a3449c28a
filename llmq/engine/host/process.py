"""The process-wide switches the engine's speed depends on, set in one explicit call.

Every entry point that runs a model (a worker, ``llmq run``/``generate``, ``llmq model``'s
optimize and eval, the benchmarks, the tests) calls ``configure_process`` once, before the
first tensor operation. Nothing here happens as a side effect of importing a module."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..kernels import native
from ..kernels.int8 import pin_int8_kernel
from . import measured
from .memory import keep_freed_memory
from .threads import keep_main_thread_serial, set_compute_threads

log = logging.getLogger(__name__)

_compile = False


def configure_process(threads: int | None = None, compile: bool = True,
                      cache_dir: str | None = None, int8_kernel: str = "auto") -> None:
    """Sets the switches; harmless to call again (the last call wins).

    - the main thread computes single-threaded, and compute threads (an engine's loop,
      ``on_compute_thread``) use ``threads`` OpenMP threads, all cores by default: threads.py
      says why;
    - glibc keeps freed activation memory instead of returning it to the OS: memory.py;
    - ``compile`` lets engines fuse the quantize and dequantize passes around int8 GEMMs with
      inductor (``LlamaModel.choose_paths``); it needs a C++ compiler, and without one int8
      layers run eagerly (the same numbers, slower);
    - ``compile`` also turns on llmq's own kernels (native.py), built with that compiler
      for this CPU under ``cache_dir`` (None: a temporary folder of the process);
    - ``int8_kernel`` pins the int8 GEMM (``onednn`` or ``fbgemm``); ``auto`` times both
      the first time an int8 layer is packed (kernels/int8.py), once per machine: timings
      that choose kernels are kept under ``cache_dir`` (measured.py);
    - inductor's compiled graphs are kept under ``cache_dir`` too (``inductor/``, unless
      ``TORCHINDUCTOR_CACHE_DIR`` says otherwise), not in a temporary folder that a reboot
      empties (the preset's layers compiled in 11 s cold against 2 s from the cache:
      bench/startup.py);
    - on CUDA, prompt attention never goes to cuDNN: PyTorch picks cuDNN's attention for
      bf16 on Hopper, and cuDNN builds a plan for every new prompt length it sees, which
      made bf16 serve slower than fp32 (bench/gpu.py); flash attention needs no plan."""
    global _compile
    keep_main_thread_serial()
    keep_freed_memory()
    set_compute_threads(threads)
    if compile and native.compiler() is None:
        log.warning("no C++ compiler found: int8 layers run their eager (slower) path")
        compile = False
    _compile = compile
    native.configure(compile, cache_dir)
    measured.configure(cache_dir)
    if cache_dir and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        inductor = Path(cache_dir) / "inductor"
        try:
            inductor.mkdir(parents=True, exist_ok=True)
            if os.access(inductor, os.W_OK):  # else inductor's own default serves
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
        except OSError:
            pass
    pin_int8_kernel(None if int8_kernel == "auto" else int8_kernel)
    torch.backends.cuda.enable_cudnn_sdp(False)


def compile_enabled() -> bool:
    return _compile
