"""Which precision's linear kernels are fastest on this CPU, measured at the model's own
shapes rather than guessed from CPU flags: on AVX2 without VNNI oneDNN's int8 (``_int_mm``)
ran 16-28x slower than fp32 and FBGEMM's 1.4x faster (int8 is timed through whichever of
the two int8_kernels.py picked), while oneDNN's bf16 needs AVX512-BF16 or AMX to be fast,
and a flag does not say how fast. A short timing of one decoder layer's linears at a decode
step's row count settles it on the machine that builds a variant, and again on the machine
that loads it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

from .config import ModelConfig
from .int8_kernels import coarsened_by_fbgemm, int8_kernel
from .kernels import Linear
from .quant import BF16Linear, Int8Linear

# the schemes the CPU preset chooses from, slowest-to-build last
CPU_SCHEMES = ("none", "bf16", "int8")
DECODE_ROWS = 64  # a full batch of slots decoding one token each
# a quantized scheme must beat fp32 by this much to be chosen: its fidelity costs something
REQUIRED_GAIN = 0.9


def layer_shapes(config: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's linears: q, k, v, o, gate, up, down."""
    h, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)]


def _layers(scheme: str, shapes: list[tuple[int, int]]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in shapes:
        w = torch.randn(n_out, n_in) / n_in ** 0.5
        if scheme == "none":
            fp = Linear(n_in, n_out)
            fp.weight.data = w
            fp.pack()
            layers.append(fp)
        elif scheme == "bf16":
            bf = BF16Linear.from_float(w)
            bf.pack()
            layers.append(bf)
        elif scheme == "int8":
            i8 = Int8Linear.from_float(w)
            i8.pack()
            layers.append(i8)
        else:
            raise ValueError(f"no timing for scheme {scheme!r}")
    return layers


@torch.inference_mode()
def time_scheme(scheme: str, shapes: list[tuple[int, int]], rows: int = DECODE_ROWS,
                seconds: float = 0.4) -> float:
    """Median milliseconds for one pass through ``shapes``' linears with ``rows`` rows."""
    layers = _layers(scheme, shapes)
    inputs = [torch.randn(rows, n_in) for n_in, _ in shapes]

    def one_pass() -> None:
        for layer, x in zip(layers, inputs, strict=True):
            layer(x)

    for _ in range(3):  # warm-up: oneDNN builds its kernels on first use
        one_pass()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        one_pass()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(config: ModelConfig, schemes: Iterable[str] = CPU_SCHEMES,
            rows: int = DECODE_ROWS) -> dict[str, float]:
    """Milliseconds per layer's linears for each scheme, measured here, side by side."""
    shapes = layer_shapes(config)
    return {s: round(time_scheme(s, shapes, rows), 4) for s in schemes}


def fastest(timings: dict[str, float]) -> str:
    """The fastest scheme, or "none" (fp32) when no quantized one beats it clearly."""
    best = min(timings, key=lambda s: timings[s])
    if best != "none" and timings[best] > REQUIRED_GAIN * timings["none"]:
        return "none"
    return best


def scheme_of(model: nn.Module) -> str:
    """The low-precision scheme of a model's linears ("none" when they are float)."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            return "int8"
        if isinstance(m, BF16Linear):
            return "bf16"
    return "none"


def slow_here(model: nn.Module, config: ModelConfig) -> str | None:
    """A warning when ``model``'s linear kernels run slower than fp32's on this CPU (a variant
    built on another machine), timed side by side; None when they do not."""
    scheme = scheme_of(model)
    if scheme not in CPU_SCHEMES or scheme == "none":
        return None
    if next(model.parameters()).device.type != "cpu":
        return None
    timings = measure(config, ("none", scheme))
    if timings[scheme] <= timings["none"]:
        return None
    from .cpu import cpu_description

    return (f"this variant's {scheme} linear kernels run at {timings['none'] / timings[scheme]:.2f}"
            f"x the speed of fp32 on this CPU ({cpu_description()}): build a variant here with "
            "`llmq model optimize --preset cpu`, or serve the float base")


def coarsened_here(model: nn.Module) -> str | None:
    """A warning when an int8 variant with 8-bit weight codes (built where oneDNN's int8 ran)
    is served here through FBGEMM, which halves those codes to 7 bits when it packs them
    (int8_kernels.py says why); None when the codes already fit or oneDNN runs."""
    layers = [m for m in model.modules()
              if isinstance(m, Int8Linear) and m.qweight.device.type == "cpu"]
    if not layers or int8_kernel() != "fbgemm":
        return None
    if not any(coarsened_by_fbgemm(m.qweight) for m in layers):
        return None
    return ("this variant's int8 weights have 8-bit codes, which this CPU's int8 kernel "
            "(FBGEMM) halves to 7 bits, at some cost in fidelity (SmolLM2: held-out top-1 "
            "89.8% against 92.3% for 7-bit codes quantized directly): rebuild it here with "
            "`llmq model optimize --preset cpu`")
