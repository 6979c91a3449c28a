"""llmq's own C++ kernels (``csrc/``), compiled for the CPU at hand the first time a process
needs them and loaded with ctypes: no torch headers, so a build takes under a second.

Three kernels live here. Decode attention (``decode_attention.cpp``), built for one model's
head dimension and group size at a time: written as products and sums for inductor it read
the cache far below memory speed and was a large share of a decode step; this one reads each
sequence's
own cached positions once (per-slot lengths, not the longest slot's), converts them to
float32 as it reads and keeps every sum in float32 (bench/kernels.py has the figures); it
also takes prompt rows, a tile of positions at a time, and writes the step's own keys and
values into the cache before it attends. And
top-k over rows (``top_k.cpp``), for the greedy choice and the int8 head's candidates, which
PyTorch's argmax and topk computed at a tenth of the speed. And the Hadamard transform of
rotated int8 layers' inputs (``hadamard.cpp``, rotated.py).

Libraries are built with ``-march=native``, so a built file is only reused on the same CPU:
its name carries a hash of the source, the compiler, the flags and the CPU's model and flags.
Built files are kept in the folder ``configure_process`` names (``LLMQ_CACHE_DIR/native``),
else in a private temporary folder for the process. A missing or failing compiler means no
native kernels: callers fall back to PyTorch's forms, which compute the same up to the
order of float sums."""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ..config import ModelConfig
from ..host import measured

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
VECTOR = 16  # floats per AVX-512 register: a head dimension is whole registers of them
MAX_HEAD_DIM, MAX_GROUP = 256, 8  # the kernel keeps G x E floats of output in registers
MAX_TOP_K = 16
CACHE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int8: 3}

_build_dir: Path | None = None
_enabled = False


def configure(enabled: bool, folder: str | Path | None = None) -> None:
    """Whether engines use the native kernels (``LLMQ_COMPILE``; configure_process calls
    this), and where built libraries are kept (None: a temporary folder of this process)."""
    global _build_dir, _enabled
    _enabled = enabled
    _build_dir = Path(folder) if folder else None
    for cached in (_library, _decode_library, _top_k_library, _hadamard_library):
        cached.cache_clear()


def enabled() -> bool:
    return _enabled


def compiler() -> str | None:
    """The C++ compiler inductor and these kernels are built with, if the machine has one."""
    return shutil.which("c++") or shutil.which("g++")


@functools.cache
def _toolchain_identity(compiler: str) -> str:
    """What a built file depends on besides its source: the compiler's version and the CPU's
    model and flags (read once per process)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True).stdout
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return version + platform.processor()
    wanted = ("model name", "flags")
    return version + "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


@functools.cache
def _temporary_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="llmq-native-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _folder() -> Path:
    if _build_dir is None:
        return _temporary_folder()
    folder = _build_dir / "native"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _build(compiler: str, source: Path, defines: tuple[str, ...]) -> Path:
    flags = [*FLAGS, *(f"-D{d}" for d in defines)]
    headers = [h.read_text() for h in sorted(CSRC.glob("*.h"))]  # what sources include
    key = hashlib.sha256("\0".join([source.read_text(), *headers, compiler, *flags,
                                    _toolchain_identity(compiler)]).encode()).hexdigest()[:16]
    target = _folder() / f"{source.stem}-{'-'.join((*defines, key)).lower()}.so"
    if not target.is_file():
        if _build_dir is not None:
            measured.first_start_on_this_machine(_build_dir)
        # per process and thread: a model's compile thread may build beside its engine
        partial = target.with_name(
            f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
        subprocess.run([compiler, *flags, "-o", str(partial), str(source)], check=True,
                       capture_output=True, text=True)
        partial.rename(target)  # atomic: processes building at once never load half a file
    return target


@functools.cache
def _library(source: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """``csrc/SOURCE`` built with ``defines``, or None where it cannot be built here (logged
    once per build)."""
    cxx = compiler()
    if cxx is None:
        log.warning("no C++ compiler: llmq's native kernels are off, PyTorch's forms run")
        return None
    try:
        return ctypes.CDLL(str(_build(cxx, CSRC / source, defines)))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("native kernel %s failed to build, PyTorch's form runs: %s", source,
                    detail.strip()[-2000:])
        return None


@functools.cache
def _decode_library(head_dim: int, group: int) -> ctypes.CDLL | None:
    lib = _library("decode_attention.cpp", (f"LLMQ_HEAD_DIM={head_dim}", f"LLMQ_GROUP={group}"))
    if lib is not None:
        declare_decode_attention(lib)
    return lib


def declare_decode_attention(lib: ctypes.CDLL) -> None:
    """The argument types of ``llmq_decode_attention`` in a build of decode_attention.cpp."""
    fn = lib.llmq_decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] + [ctypes.c_int] * 4 + [
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_int64,
        ctypes.c_int64] + [ctypes.c_void_p] * 3


@functools.cache
def _top_k_library() -> ctypes.CDLL | None:
    lib = _library("top_k.cpp")
    if lib is not None:
        fn = lib.llmq_top_k_rows
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return lib


def hadamard_library() -> ctypes.CDLL | None:
    """The blocks-of-64 Hadamard transform (``hadamard.cpp``) where native kernels are on and
    it builds here, else None (rotated.py then multiplies by the matrix)."""
    return _hadamard_library() if _enabled else None


@functools.cache
def _hadamard_library() -> ctypes.CDLL | None:
    lib = _library("hadamard.cpp")
    if lib is not None:
        fn = lib.llmq_hadamard64
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 4 + [ctypes.c_int]
        fn = lib.llmq_hadamard64_quantize
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        fn = lib.llmq_rms_norm_hadamard64_quantize
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_float] + [ctypes.c_void_p] * 2 + [
            ctypes.c_int64] * 3 + [ctypes.c_int]
        fn = lib.llmq_swiglu_hadamard64_quantize
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    return lib


def serves(config: ModelConfig, cache_dtype: torch.dtype) -> bool:
    """Whether the native kernel serves this model's decode attention here."""
    dim, group = config.head_dim, config.group_size
    return (_enabled and cache_dtype in CACHE_DTYPES and dim % VECTOR == 0 and dim <= MAX_HEAD_DIM
            and 1 <= group <= MAX_GROUP and _decode_library(dim, group) is not None)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     slots: torch.Tensor, lengths: torch.Tensor, q_scale: float = 1.0,
                     new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     window: int = 0) -> torch.Tensor:
    """Attention of one query position per row over its slot's first ``lengths[row]`` cached
    positions, or with a ``window`` the last ``window`` of them. q ``[B, K, G, E]`` float32,
    multiplied by ``q_scale`` as it is read; keys and values ``[S, K, P, R]`` (the whole
    layer cache, positions contiguous, position p at ``p % P``: a windowed layer's ring; R =
    E, or E + 4 for int8: kv_cache.py); slots and lengths ``[B]`` int64. ``new``: the step's
    own keys and values ``[B * K, E]`` float32 and their rows in the caches viewed as
    ``[S * K * P, R]``, written first, in the same call (as ``kv_cache.to_cache`` converts
    them and ``index_copy_`` writes them). The ring must hold every position a row sees, and
    the step's writes must not land on positions its rows see (kv_cache.positions_kept).
    Returns ``[B, K, G, E]`` float32."""
    rows, kv_heads, group, dim = q.shape
    lib = _decode_library(dim, group)
    assert lib is not None, "check serves() first"
    assert keys.stride() == values.stride() and keys.stride(-1) == 1 \
        and keys.stride(-2) == keys.shape[-1], "keys and values: one layout, positions contiguous"
    q = q.contiguous()
    slots = slots.to(torch.int64).contiguous()  # held while the kernel reads them
    lengths = lengths.to(torch.int64).contiguous()
    written: list[torch.Tensor] = []
    if new is not None:
        assert keys.is_contiguous() and values.is_contiguous(), "writes address whole caches"
        k_new, v_new, cache_rows = new
        written = [k_new.float().contiguous(), v_new.float().contiguous(),
                   cache_rows.to(torch.int64).contiguous()]
        assert written[0].shape == written[1].shape == (rows * kv_heads, dim)
        assert written[2].shape == (rows * kv_heads,)
    out = torch.empty_like(q)
    status = lib.llmq_decode_attention(
        q.data_ptr(), keys.data_ptr(), values.data_ptr(), slots.data_ptr(),
        lengths.data_ptr(), out.data_ptr(), rows, kv_heads, group, dim,
        CACHE_DTYPES[keys.dtype], keys.stride(0), keys.stride(1), torch.get_num_threads(),
        q_scale, keys.shape[2], window,
        *(t.data_ptr() for t in written) if written else (None, None, None))
    if status:
        raise ValueError(f"native decode attention was not built for head dim {dim}, group "
                         f"{group}, {keys.dtype}")
    return out


def top_k_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x.topk(k, dim=-1).indices`` for a 2-D float32 CPU tensor (ties to the lower index, as
    ``argmax``; NaN never chosen), through the native kernel where it is enabled and built,
    else through PyTorch."""
    lib = _top_k_library() if (_enabled and x.device.type == "cpu" and x.dtype == torch.float32
                               and x.dim() == 2 and x.stride(-1) == 1 and 1 <= k <= MAX_TOP_K
                               and x.shape[-1] >= k) else None
    if lib is None:
        return x.argmax(dim=-1, keepdim=True) if k == 1 else x.topk(k, dim=-1).indices
    out = torch.empty(x.shape[0], k, dtype=torch.int64)
    lib.llmq_top_k_rows(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), k, out.data_ptr(),
                        torch.get_num_threads())
    return out
