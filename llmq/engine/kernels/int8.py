"""The int8 GEMM behind ``Int8Linear``, chosen per process by timing the candidates here.

``torch._int_mm`` goes to oneDNN, fast where the CPU has AVX512-VNNI or AMX and a reference
loop, far slower than fp32, where it has AVX2 alone. FBGEMM, PyTorch's other quantized
backend, is built for AVX2 (``vpmaddubsw``) and beats fp32 there. Which one wins is not a
question a CPU flag answers, so ``int8_kernel`` times both at a decoder layer's shapes the
first time an int8 layer is packed, and every int8 layer of the process uses oneDNN unless
FBGEMM clearly wins (``FBGEMM_REQUIRED_GAIN``). A
variant is stored the same way for both (int8 weights, one scale per output channel), so
an artifact built on one CPU runs on the other's fastest kernel.

FBGEMM's dynamic linear quantizes its input with one scale per tensor, and per-tensor
scales collapse this model (one token's outlier flattens the rest of the batch). Each row is
divided by its own absolute maximum first and multiplied back afterwards: the linear map
commutes with that, and every row then spans [-1, 1], so the single scale is the per-token
one ``Int8Linear`` defines. Under inductor the two scalings fuse into the neighbouring
norm and activation loops; the GEMM itself is an opaque custom op (the packed weight is a
TorchScript object dynamo cannot trace) that finds the packed form of its weight in a table
keyed by the weight's storage."""

from __future__ import annotations

import logging
import statistics
import time
import warnings
import weakref

import torch

from ..host import measured

log = logging.getLogger(__name__)

KERNELS = ("onednn", "fbgemm")  # onednn: torch._int_mm
# FBGEMM's AVX2 kernel adds pairs of u8 x s8 products in int16 (vpmaddubsw), which saturates
# past 32,767. Its activations are u8 around a zero point near 128, so with 8-bit weights a
# pair saturates even near x = 0 (2 x 128 x 127). Weight codes within +-64 keep every pair
# exact (2 x 255 x 64 = 32,640): a process that runs FBGEMM quantizes weights to those 7 bits
# (``weight_levels``), and halves the codes of an 8-bit variant built elsewhere when it packs
# them. On SmolLM2's held-out prompts 7-bit weights kept more fidelity than halved 8-bit
# codes, saturating 8-bit codes or 7-bit activations (FBGEMM's reduce_range), and less than
# oneDNN's exact int8 (bench/BENCHMARKS.md has the figures).
FBGEMM_WEIGHT_LEVELS = 64
_TIMING_SHAPE = (64, 576, 1536)  # rows, in, out: a decode step's FFN projection of SmolLM2
# FBGEMM must beat oneDNN by this much to be chosen. Its 7-bit weights cost fidelity, and its
# GEMM is opaque to inductor, while oneDNN's per-token quantization fuses into the layer's
# other loops: where AVX512-VNNI runs the two can tie in this timing while the engine runs
# faster, and more faithfully, through oneDNN. On AVX2 alone FBGEMM wins by far.
FBGEMM_REQUIRED_GAIN = 0.7

_chosen: str | None = None
_pinned: str | None = None
_packed: dict[tuple[int, tuple[int, ...]], tuple[weakref.ref, object]] = {}


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def pin_int8_kernel(name: str | None) -> None:
    """Pins the int8 GEMM of this process (``LLMQ_INT8_KERNEL``, through
    ``configure_process``) instead of the timed choice; None times it again."""
    if name is not None and name not in KERNELS:
        raise ValueError(f"int8 kernel must be one of {', '.join(KERNELS)}, not {name!r}")
    global _pinned
    _pinned = name


def int8_kernel() -> str:
    """The faster int8 GEMM on this CPU, timed once per process."""
    global _chosen
    if _pinned is not None:
        return _pinned
    if _chosen is None:
        timings = (measured.remembered(f"int8-gemm {_TIMING_SHAPE}", time_kernels)
                   if fbgemm_available() else {"onednn": 0.0})
        _chosen = faster_kernel(timings)
        log.info("int8 kernel: %s (ms per call at %s: %s)", _chosen, _TIMING_SHAPE, timings)
    return _chosen


def faster_kernel(timings: dict[str, float]) -> str:
    """oneDNN unless FBGEMM is clearly faster (``FBGEMM_REQUIRED_GAIN``)."""
    if "fbgemm" in timings and timings["fbgemm"] < FBGEMM_REQUIRED_GAIN * timings["onednn"]:
        return "fbgemm"
    return "onednn"


@torch.inference_mode()
def time_kernels(shape: tuple[int, int, int] = _TIMING_SHAPE) -> dict[str, float]:
    """Median milliseconds of one int8 linear through each kernel, side by side."""
    rows, n_in, n_out = shape
    qweight = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8)
    scale = torch.full((n_out,), 0.01)
    x = torch.randn(rows, n_in)
    calls = {"onednn": lambda: onednn_int8_linear(x, qweight, scale),
             "fbgemm": lambda: fbgemm_int8_linear(x, qweight, scale)}
    timings = {}
    for name, call in calls.items():
        call()
        samples = []
        deadline = time.perf_counter() + 0.1
        while time.perf_counter() < deadline or len(samples) < 3:
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000)
        timings[name] = round(statistics.median(samples), 4)
    return timings


def weight_levels(device: torch.device) -> int:
    """The largest weight code for int8 layers made here: 127, or 64 where FBGEMM runs."""
    if device.type == "cpu" and int8_kernel() == "fbgemm":
        return FBGEMM_WEIGHT_LEVELS
    return 127


def coarsened_by_fbgemm(qweight: torch.Tensor) -> bool:
    """Whether ``qweight`` holds 8-bit codes, which FBGEMM halves when it packs them."""
    return int(qweight.abs().max()) > FBGEMM_WEIGHT_LEVELS


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``x ~= q * scale``; scale ``[T, 1]``."""
    scale = row_scale(x) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


def row_scale(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)


def onednn_int8_linear(x: torch.Tensor, qweight: torch.Tensor,
                       scale: torch.Tensor) -> torch.Tensor:
    """``x @ (qweight * scale[:, None]).T`` in float32, x quantized per row, through
    ``torch._int_mm``."""
    xq, x_scale = quantize_rows(x.float())
    return onednn_int8_mm(xq, x_scale, qweight, scale)


def onednn_int8_mm(xq: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor,
                   scale: torch.Tensor) -> torch.Tensor:
    """The product of rows already quantized (``quantize_rows``' codes and scales), in
    float32."""
    return torch._int_mm(xq, qweight.t()).mul(scale).mul_(x_scale)


def fbgemm_int8_linear(x: torch.Tensor, qweight: torch.Tensor,
                       scale: torch.Tensor) -> torch.Tensor:
    """The same product through FBGEMM; x quantized per row by the scaling above."""
    x = x.float()
    r = row_scale(x)
    return torch.ops.llmq.fbgemm_int8_mm(x / r, qweight, scale) * r


@torch.library.custom_op("llmq::fbgemm_int8_mm", mutates_args=())
def fbgemm_int8_mm(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x.contiguous(), _packed_weight(qweight, scale),
                                              False)  # reduce_range: the note above


@fbgemm_int8_mm.register_fake
def _(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[0])


def _packed_weight(qweight: torch.Tensor, scale: torch.Tensor) -> object:
    """FBGEMM's packed form of ``qweight``, made on first use. The table holds a weak
    reference to the weight: while it lives no other tensor can own its storage, and once
    it dies its entry goes too."""
    key = (qweight.data_ptr(), tuple(qweight.shape))
    entry = _packed.get(key)
    if entry is not None and entry[0]() is not None:
        return entry[1]
    torch.backends.quantized.engine = "fbgemm"
    zero = torch.zeros(qweight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated; torch is pinned
        warnings.simplefilter("ignore")
        step = 2.0 if coarsened_by_fbgemm(qweight) else 1.0
        w_scale = scale * step
        w = torch.quantize_per_channel(qweight.float() * scale[:, None], w_scale.double(), zero,
                                       0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
    _packed[key] = (weakref.ref(qweight, lambda _, key=key: _packed.pop(key, None)), packed)
    return packed


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 product through this process's kernel (CUDA: ``torch._int_mm``)."""
    if x.device.type == "cpu" and int8_kernel() == "fbgemm":
        return fbgemm_int8_linear(x, qweight, scale)
    return onednn_int8_linear(x, qweight, scale)
