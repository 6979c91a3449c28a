"""Which precision's linear kernels are fastest on this CPU, measured at the model's own
shapes rather than guessed from CPU flags: on AVX2 without VNNI oneDNN's int8 (``_int_mm``)
is many times slower than fp32 and FBGEMM's faster (int8 is timed through whichever of the
two int8.py picked), while oneDNN's bf16 needs AVX512-BF16 or AMX to be fast, and a flag
does not say how fast. A short timing of one decoder layer's linears at a decode
step's row count settles it on the machine that builds a variant, and again on the machine
that loads it.

Each scheme is timed as the engine runs it. Where the engine compiles its layers (a C++
compiler at hand) and int8 goes through oneDNN, the per-token quantization of the input fuses
into the RMSNorm or activation loop before it, so int8 is timed from already-quantized rows:
timed eagerly, that quantization is a pass of its own, which made int8 tie with bf16 where
AVX512-BF16 runs (the choice flipping between builds) while the engine ran int8 clearly
faster."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

from ..config import ModelConfig
from ..host import measured
from ..host.cpu import cpu_description
from ..host.process import compile_enabled
from .dense import Linear
from .int8 import coarsened_by_fbgemm, int8_kernel
from .quantized import BF16Linear, Int8Linear

# the schemes the CPU preset chooses from, slowest-to-build last
CPU_SCHEMES = ("none", "bf16", "int8")
DECODE_ROWS = 64  # a full batch of slots decoding one token each
# a less exact scheme must beat a more exact one by this much to be chosen over it (int8
# over bf16, either over fp32): its fidelity costs something. CPU_SCHEMES is in that order.
REQUIRED_GAIN = 0.9


def layer_shapes(config: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's linears: q, k, v, o, gate, up, down."""
    h, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)]


class _FusedInt8GEMM(nn.Module):
    """What an int8 linear costs inside a compiled layer: the GEMM alone, on rows quantized
    by the loop before it (its dequantizing epilogue fuses into the loop after it)."""

    def __init__(self, layer: Int8Linear) -> None:
        super().__init__()
        self.qweight = layer.qweight

    def forward(self, xq: torch.Tensor) -> torch.Tensor:
        return torch._int_mm(xq, self.qweight.t())


def int8_fuses_here() -> bool:
    """Whether this process's engines run int8 GEMMs from fused quantization passes."""
    return compile_enabled() and int8_kernel() == "onednn"


def _layers(scheme: str, shapes: list[tuple[int, int]], fused_int8: bool) -> list[nn.Module]:
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
            layers.append(_FusedInt8GEMM(i8) if fused_int8 else i8)
        else:
            raise ValueError(f"no timing for scheme {scheme!r}")
    return layers


class _SchemePass:
    """One pass through a decoder layer's linears in one scheme, on inputs made once."""

    def __init__(self, scheme: str, shapes: list[tuple[int, int]], rows: int,
                 fused_int8: bool | None = None) -> None:
        fused = scheme == "int8" and (int8_fuses_here() if fused_int8 is None else fused_int8)
        self.layers = _layers(scheme, shapes, fused)
        self.inputs = [torch.randint(-127, 128, (rows, n_in), dtype=torch.int8) if fused
                       else torch.randn(rows, n_in) for n_in, _ in shapes]

    def __call__(self) -> float:
        """Milliseconds of one pass."""
        start = time.perf_counter()
        for layer, x in zip(self.layers, self.inputs, strict=True):
            layer(x)
        return (time.perf_counter() - start) * 1000


@torch.inference_mode()
def time_schemes(schemes: Iterable[str], shapes: list[tuple[int, int]],
                 rows: int = DECODE_ROWS, seconds: float = 0.4,
                 fused_int8: bool | None = None) -> dict[str, float]:
    """Median milliseconds for one pass through ``shapes``' linears with ``rows`` rows, per
    scheme, the schemes taking turns pass by pass for ``seconds`` each: timed one after the
    other, a drift of the machine's speed (another process, the clock) during one scheme's
    turn decided between two close ones, and the preset's choice flipped from one build to
    the next. ``fused_int8`` (default: ``int8_fuses_here()``) times int8 as
    ``_FusedInt8GEMM``."""
    passes = {s: _SchemePass(s, shapes, rows, fused_int8) for s in schemes}
    for one_pass in passes.values():
        for _ in range(3):  # warm-up: oneDNN builds its kernels on first use
            one_pass()
    samples: dict[str, list[float]] = {s: [] for s in passes}
    deadline = time.perf_counter() + seconds * len(passes)
    while time.perf_counter() < deadline or min(map(len, samples.values())) < 5:
        for scheme, one_pass in passes.items():
            samples[scheme].append(one_pass())
    return {s: statistics.median(v) for s, v in samples.items()}


def measure(config: ModelConfig, schemes: Iterable[str] = CPU_SCHEMES,
            rows: int = DECODE_ROWS) -> dict[str, float]:
    """Milliseconds per layer's linears for each scheme, measured here, side by side."""
    timings = time_schemes(schemes, layer_shapes(config), rows)
    return {s: round(t, 4) for s, t in timings.items()}


def fastest(timings: dict[str, float]) -> str:
    """The fastest scheme that clearly beats every more exact one timed: "none" (fp32),
    then bf16, then int8."""
    chosen = "none"
    for scheme in CPU_SCHEMES[1:]:
        if scheme in timings and timings[scheme] < REQUIRED_GAIN * timings[chosen]:
            chosen = scheme
    return chosen


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
    shapes = layer_shapes(config)
    key = f"linear schemes none,{scheme} {shapes} rows {DECODE_ROWS} fused {int8_fuses_here()}"
    timings = measured.remembered(key, lambda: measure(config, ("none", scheme)))
    if timings[scheme] <= timings["none"]:
        return None
    return (f"this variant's {scheme} linear kernels run at {timings['none'] / timings[scheme]:.2f}"
            f"x the speed of fp32 on this CPU ({cpu_description()}): build a variant here with "
            "`llmq model optimize --preset cpu`, or serve the float base")


def coarsened_here(model: nn.Module) -> str | None:
    """A warning when an int8 variant with 8-bit weight codes (built where oneDNN's int8 ran)
    is served here through FBGEMM, which halves those codes to 7 bits when it packs them
    (int8.py says why); None when the codes already fit or oneDNN runs."""
    layers = [m for m in model.modules()
              if isinstance(m, Int8Linear) and m.qweight.device.type == "cpu"]
    if not layers or int8_kernel() != "fbgemm":
        return None
    if not any(coarsened_by_fbgemm(m.qweight) for m in layers):
        return None
    return ("this variant's int8 weights have 8-bit codes, which this CPU's int8 kernel "
            "(FBGEMM) halves to 7 bits, at some cost in fidelity against 7-bit codes "
            "quantized directly: rebuild it here with "
            "`llmq model optimize --preset cpu`")
