"""Host memory behaviour that the engine's speed depends on."""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np
import torch


def zeros_lazily(shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """Zeros that cost no memory until written: on CPU from calloc (via numpy), which maps
    zero pages lazily, in any dtype (bytes viewed as it: all-zero bytes are zero in every
    dtype torch has). ``torch.zeros`` writes every page at once: an int8 KV cache of 64 slots
    took 6 s of a worker's start that way (bench/startup.py)."""
    if device.type == "cpu":
        count = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        t = torch.from_numpy(np.zeros(count, dtype=np.uint8)).view(dtype).view(shape)
        _no_huge_pages(t)
        return t
    return torch.zeros(shape, dtype=dtype, device=device)


_PAGE = 4096
_MADV_NOHUGEPAGE = 15


def _no_huge_pages(t: torch.Tensor) -> None:
    """Keeps the kernel from backing the cache with 2 MB pages: one written position per slot
    and head would then commit (and zero) 2 MB at a time, i.e. the whole cache at once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        addr = t.data_ptr()
        start = (addr + _PAGE - 1) // _PAGE * _PAGE
        end = addr + t.numel() * t.element_size()
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_NOHUGEPAGE)
    except (OSError, AttributeError):  # an advisory call: without it only memory use grows
        pass


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit


def keep_freed_memory() -> None:
    """Lets glibc keep and reuse freed blocks up to 32 MB instead of returning them to the
    OS. Activations of a step are megabytes each; by default every one is a fresh mmap whose
    pages fault in and are zeroed on first touch, a noticeable share of a prefill step.
    Process-wide and harmless to call twice."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc: only speed is lost
        pass
