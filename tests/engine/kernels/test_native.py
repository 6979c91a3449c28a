"""llmq's native kernels beyond what tests/engine/model/test_attention.py checks: top-k over rows
(the greedy choice and the int8 head's candidates) with PyTorch's indices, ties to the lower
index as argmax, NaN never chosen, PyTorch's own forms when the native kernels are off (as in
the tests' process), and the AVX2 and plain C++ branches of both kernels."""

from __future__ import annotations

import ctypes
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmq.engine.kernels import native
from tests.engine.model.test_attention import (
    as_cache,
    assert_same_bits,
    prompt_rows_case,
    reference,
    ring_window_case,
    written_case,
)
from tests.engine.tiny import HAS_COMPILER, native_kernels

pytestmark = pytest.mark.skipif(not HAS_COMPILER,
                                reason="native kernels are built with a C++ compiler")


@pytest.fixture
def native_on() -> Iterator[None]:
    with native_kernels():
        yield


def test_top_k_matches_pytorch_on_a_vocabulary(native_on: None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 49_152 + 5, generator=g) * 4  # not a multiple of any vector width
    for k in (1, 4, 16):
        assert torch.equal(native.top_k_indices(x, k), x.topk(k, dim=-1).indices)
    assert torch.equal(native.top_k_indices(x, 1)[:, 0], x.argmax(-1))
    wide = torch.randn(8, 2 * 1000, generator=g)[:, :1000]  # rows with a stride of their own
    assert torch.equal(native.top_k_indices(wide, 3), wide.topk(3, dim=-1).indices)


def test_top_k_breaks_ties_low_and_skips_nan(native_on: None) -> None:
    x = torch.zeros(4, 100)
    x[0, 50] = 1.0  # one winner, then ties among zeros
    x[1] = float("-inf")  # a row a grammar masked whole
    x[2, 7], x[2, 9] = float("nan"), 2.0
    x[3, 60:] = 3.0
    assert native.top_k_indices(x, 3).tolist() == [[50, 0, 1], [0, 1, 2], [9, 0, 1],
                                                    [60, 61, 62]]
    assert torch.equal(native.top_k_indices(x[[0, 1, 3]], 1)[:, 0], x[[0, 1, 3]].argmax(-1))


def test_pytorch_serves_when_the_native_kernels_are_off() -> None:
    assert not native.enabled()
    x = torch.randn(3, 50)
    assert torch.equal(native.top_k_indices(x, 1)[:, 0], x.argmax(-1))
    assert torch.equal(native.top_k_indices(x, 5), x.topk(5, dim=-1).indices)


@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_the_avx2_and_plain_builds_compute_the_same(march: str, tmp_path: Path) -> None:
    """Workers build with -march=native, so an AVX2-only CPU runs the AVX2 branch and an
    older one the plain C++: both are built here for those targets and run on this CPU."""
    def build(source: str, *defines: str) -> ctypes.CDLL:
        flags = [f if f != "-march=native" else f"-march={march}" for f in native.FLAGS]
        out = tmp_path / f"{source}.so"
        subprocess.run([str(native.compiler()), *flags, *defines, "-o", str(out),
                        str(native.CSRC / source)], check=True)
        return ctypes.CDLL(str(out))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4_099, generator=g)
    indices = torch.empty(16, 4, dtype=torch.int64)
    assert build("top_k.cpp").llmq_top_k_rows(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(16), ctypes.c_int64(4_099),
        ctypes.c_int64(4_099), 4, ctypes.c_void_p(indices.data_ptr()), 2) == 0
    assert torch.equal(indices, x.topk(4, dim=-1).indices)

    lib = build("decode_attention.cpp", "-DLLMQ_HEAD_DIM=32", "-DLLMQ_GROUP=2")
    native.declare_decode_attention(lib)

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
               lengths: torch.Tensor, scale: float = 1.0,
               new: tuple[torch.Tensor, ...] = (), window: int = 0) -> torch.Tensor:
        out = torch.empty_like(q)
        assert lib.llmq_decode_attention(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), slots.data_ptr(),
            lengths.data_ptr(), out.data_ptr(), len(slots), keys.shape[1], 2, 32,
            native.CACHE_DTYPES[keys.dtype], keys.stride(0), keys.stride(1), 2, scale,
            keys.shape[2], window, *([t.data_ptr() for t in new] or [None] * 3)) == 0
        return out

    slots, kv_heads, length = 5, 2, 40
    q = torch.randn(slots, kv_heads, 2, 32, generator=g) * 32 ** -0.5
    rows, lengths = torch.arange(slots), torch.tensor([1, 40, 17, 3, 29])
    for dtype in native.CACHE_DTYPES:
        keys = as_cache(torch.randn(slots, kv_heads, length, 32, generator=g), dtype)
        values = as_cache(torch.randn(slots, kv_heads, length, 32, generator=g), dtype)
        torch.testing.assert_close(attend(q, keys, values, rows, lengths).double(),
                                   reference(q, keys, values, lengths), rtol=1e-4, atol=1e-5)
        # prompt rows: tiles of W consecutive positions (AVX2), one row at a time (plain)
        pq, pk, pv, pslots, plengths, want = prompt_rows_case(32, 2, dtype, g)
        torch.testing.assert_close(attend(pq, pk, pv, pslots, plengths).double(), want,
                                   rtol=1e-4, atol=1e-5)
        # the step's own keys and values, written by the call as to_cache converts them
        k_new, v_new, cache_rows, want_k, want_v = written_case(32, pk, pv, pslots, plengths, g)
        attend(pq, pk, pv, pslots, plengths, 1.0, (k_new, v_new, cache_rows))
        assert_same_bits(pk, want_k)
        assert_same_bits(pv, want_v)
        # a windowed layer's ring
        rq, rk, rv, rslots, rlengths, want = ring_window_case(32, 2, dtype, g)
        torch.testing.assert_close(attend(rq, rk, rv, rslots, rlengths, window=16).double(),
                                   want, rtol=1e-4, atol=1e-5)
