"""The CPU preset's precision is chosen by timing kernels here, never by a flag alone."""

from __future__ import annotations

from pathlib import Path

import torch

from llmq.engine.kernels import timing as kernel_timing
from llmq.engine.kernels.int8 import quantize_rows
from llmq.engine.kernels.quantized import Int8Linear, quantize_layers
from llmq.engine.model.artifact import load_variant
from llmq.engine.model.decoder import LlamaModel
from llmq.variants.optimize import build, preset
from tests.conftest import Tiny
from tests.engine.tiny import forced_int8_kernel


def test_a_less_exact_scheme_must_clearly_beat_the_more_exact_ones() -> None:
    assert kernel_timing.fastest({"none": 1.0, "bf16": 0.5, "int8": 0.7}) == "bf16"
    assert kernel_timing.fastest({"none": 1.0, "bf16": 0.95, "int8": 3.0}) == "none"
    assert kernel_timing.fastest({"none": 1.0, "bf16": 2.0, "int8": 16.0}) == "none"
    assert kernel_timing.fastest({"none": 1.0, "bf16": 0.55, "int8": 0.52}) == "bf16"  # a tie
    assert kernel_timing.fastest({"none": 1.0, "bf16": 0.55, "int8": 0.30}) == "int8"
    assert kernel_timing.fastest({"none": 1.0, "bf16": 2.0, "int8": 0.6}) == "int8"  # AVX2
    assert kernel_timing.fastest({"none": 1.0, "int8": 0.95}) == "none"


def test_every_cpu_scheme_is_timed_at_the_model_shapes(tiny: Tiny) -> None:
    timings = kernel_timing.measure(tiny.config, rows=8)
    assert set(timings) == set(kernel_timing.CPU_SCHEMES)
    assert all(t > 0 for t in timings.values())
    h, f = tiny.config.hidden_size, tiny.config.intermediate_size
    assert (h, f) in kernel_timing.layer_shapes(tiny.config)
    assert (f, h) in kernel_timing.layer_shapes(tiny.config)


def test_fused_int8_is_timed_on_the_gemm_the_engine_runs(tiny: Tiny) -> None:
    """Inside compiled layers only the GEMM is int8's own cost: it must be the very product
    of the eager layer, from rows quantized beforehand."""
    shapes = kernel_timing.layer_shapes(tiny.config)
    with forced_int8_kernel("onednn"):
        for fused in (False, True):
            layers = kernel_timing._layers("int8", shapes, fused_int8=fused)
            assert all(isinstance(m, kernel_timing._FusedInt8GEMM) == fused for m in layers)
            timed = kernel_timing.time_schemes(["int8"], shapes, rows=8, seconds=0.01,
                                               fused_int8=fused)
            assert timed["int8"] > 0
        eager = Int8Linear.from_float(torch.randn(32, tiny.config.hidden_size))
        x = torch.randn(5, tiny.config.hidden_size)
        xq, x_scale = quantize_rows(x)
        gemm = kernel_timing._FusedInt8GEMM(eager)(xq)
        assert gemm.dtype == torch.int32
        torch.testing.assert_close(gemm * eager.scale * x_scale, eager(x))


def test_the_cpu_preset_builds_what_it_measured(tiny: Tiny, tmp_path: Path) -> None:
    assert preset("cpu").quantize == "auto"
    _, variant, _, manifest = build(str(tiny.gguf), preset("cpu"), tmp_path / "v",
                                    log=lambda _: None)
    kernels = manifest["metrics"]["kernels"]
    assert kernels["chosen"] == kernel_timing.fastest(kernels["ms_per_layer"])
    assert kernels["int8_gemm"] in ("onednn", "fbgemm")
    assert manifest["recipe"]["quantize"] == kernels["chosen"]
    assert kernel_timing.scheme_of(variant) == kernels["chosen"]
    assert "(" in kernels["cpu"]  # the model and its flags
    loaded, _, _ = load_variant(tmp_path / "v")
    assert kernel_timing.scheme_of(loaded) == kernels["chosen"]


def test_a_float_model_never_warns(tiny: Tiny) -> None:
    model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    assert kernel_timing.scheme_of(model) == "none"
    assert kernel_timing.slow_here(model, tiny.config) is None


def test_8_bit_codes_served_through_fbgemm_warn(tiny: Tiny) -> None:
    """Codes made for oneDNN are coarsened when FBGEMM packs them; codes made for FBGEMM or
    served through oneDNN are not, and a float model never warns."""
    built_for = {}
    for kernel in ("onednn", "fbgemm"):
        with forced_int8_kernel(kernel):
            model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
            quantize_layers(model, "int8")
            built_for[kernel] = model
    with forced_int8_kernel("fbgemm"):
        warning = kernel_timing.coarsened_here(built_for["onednn"])
        assert warning is not None and "7 bits" in warning
        assert kernel_timing.coarsened_here(built_for["fbgemm"]) is None
        assert kernel_timing.coarsened_here(
            LlamaModel.from_hf_weights(tiny.config, tiny.weights)) is None
    with forced_int8_kernel("onednn"):
        assert kernel_timing.coarsened_here(built_for["onednn"]) is None
