"""Both int8 GEMMs compute the per-token product ``Int8Linear`` defines, on any CPU: oneDNN's
``torch._int_mm`` exactly, FBGEMM with 7-bit weight codes (llmq/engine/kernels/int8.py says why)."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from llmq.engine.kernels import int8 as int8_kernels
from llmq.engine.kernels.quantized import Int8Linear
from tests.engine.tiny import HAS_COMPILER, forced_int8_kernel


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def layer_and_input(rows: int = 37) -> tuple[Int8Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g) * 0.1
    x = torch.randn(rows, 64, generator=g)
    x[:, 5] *= 20  # an outlier channel, as real activations have
    layer = Int8Linear.from_float(w)
    layer.pack()
    return layer, x, w


@pytest.mark.parametrize(("kernel", "tolerance"), [("onednn", 0.02), ("fbgemm", 0.03)])
def test_each_kernel_computes_the_int8_product(kernel: str, tolerance: float) -> None:
    layer, x, w = layer_and_input()
    with forced_int8_kernel(kernel):
        out = layer(x)
        # per token: a row 1000 times larger must not flatten the others, as one scale
        # for the whole batch would
        loud = x.clone()
        loud[0] *= 1000
        rest = layer(loud)[1:]
    assert out.shape == (37, 96) and out.dtype == torch.float32
    assert rel_err(out, x @ w.T) < tolerance
    assert rel_err(rest, out[1:]) < tolerance
    if kernel == "onednn":  # exact integer arithmetic: the only error is rounding x and w
        x_scale = x.abs().amax(-1, keepdim=True) / 127
        fake = (torch.round(x / x_scale) * x_scale) @ layer.dequantized().T
        assert rel_err(out, fake) < 1e-5


def test_the_two_kernels_agree() -> None:
    layer, x, _ = layer_and_input()
    with forced_int8_kernel("onednn"):
        exact = layer(x)
    with forced_int8_kernel("fbgemm"):
        halved = layer(x)
    assert rel_err(halved, exact) < 0.03


def test_the_kernel_is_chosen_by_timing_both() -> None:
    timings = int8_kernels.time_kernels((8, 64, 96))
    assert set(timings) == set(int8_kernels.KERNELS) and all(t > 0 for t in timings.values())
    assert int8_kernels.int8_kernel() in int8_kernels.KERNELS
    with pytest.raises(ValueError, match="int8 kernel must be one of"):
        int8_kernels.pin_int8_kernel("mkl")


def test_fbgemm_is_chosen_only_when_clearly_faster() -> None:
    """A tie goes to oneDNN's exact 8-bit arithmetic; AVX2's 40x goes to FBGEMM."""
    assert int8_kernels.faster_kernel({"onednn": 0.107, "fbgemm": 0.109}) == "onednn"
    assert int8_kernels.faster_kernel({"onednn": 0.107, "fbgemm": 0.09}) == "onednn"
    assert int8_kernels.faster_kernel({"onednn": 98.0, "fbgemm": 2.5}) == "fbgemm"
    assert int8_kernels.faster_kernel({"onednn": 0.0}) == "onednn"  # no FBGEMM in this build


def test_a_packed_weight_goes_with_its_layer() -> None:
    layer, x, _ = layer_and_input()
    with forced_int8_kernel("fbgemm"):
        layer(x)
    key = (layer.qweight.data_ptr(), tuple(layer.qweight.shape))
    assert key in int8_kernels._packed
    del layer
    gc.collect()
    assert key not in int8_kernels._packed


@pytest.mark.skipif(not HAS_COMPILER, reason="inductor needs a C++ compiler for CPU code")
def test_fbgemm_runs_inside_an_inductor_graph_without_breaking_it() -> None:
    layer, x, _ = layer_and_input()

    def block(h: torch.Tensor) -> torch.Tensor:
        return F.silu(layer(F.rms_norm(h, (64,))))

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with forced_int8_kernel("fbgemm"), torch.inference_mode():
        compiled = torch.compile(block, dynamic=True)
        assert rel_err(compiled(x), block(x)) < 1e-5
        assert rel_err(compiled(x[:9]), block(x[:9])) < 1e-5
    assert not torch._dynamo.utils.counters["graph_break"]
