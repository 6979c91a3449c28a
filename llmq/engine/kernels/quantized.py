"""Low-precision linear layers; which one is fastest depends on the CPU, so every variant
records its measured speed (bench/kernels.py and bench/optimize.py have the figures).

``bf16``: bf16 weights and matmul inputs, float32 accumulation, through oneDNN on a weight
packed once: several times the fp32 GEMM with AMX, a little faster with AVX512-BF16 alone.

``int8`` (W8A8): int8 weights with one scale per output channel, and activations quantized
to int8 per token at run time, so the matmul itself is an int8 GEMM (``torch._int_mm``
through oneDNN where the CPU has VNNI; FBGEMM on AVX2-only CPUs; int8.py times both).
Per-token scales keep one token's outliers from
flattening every other token in the packed batch; per-tensor scales, as in ``torch.ao``
dynamic quantization, collapse this model's output (FBGEMM's per-tensor activations are made
per-token by scaling each row first: int8.py). The quantize and dequantize passes
around the GEMM cost more than the GEMM when run as separate eager ops, so on CPU the
decoder layers around them are compiled with inductor, which moves those passes into the
neighbouring ops' loops (``LlamaModel.choose_paths``); eager mode gives the same numbers and
serves where no compiler is found.

Every layer here keeps ``linear.LinearLayer``'s contract: ``quantize_layers`` swaps them in once,
at build or load time, and the decoder's maths never asks which one it holds.

``int4``: weights in groups of 32 along the input with a scale and zero point each, through
``torch.ops.aten._weight_int4pack_mm_for_cpu``; activations stay float. It reproduces the
shipped Q4_1 weights almost exactly, but its CPU kernel is slower than fp32.

``fp8``: e4m3 weights and per-token activations on a GPU's tensor cores (fp8.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dense import onednn_linear, pack_weight
from .fp8 import FP8Linear
from .int8 import int8_kernel, int8_linear, weight_levels
from .linear import LinearLayer

INT4_GROUP = 32


def quantize_per_channel(weight: torch.Tensor, levels: int = 127
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row, codes in ``[-levels, levels]``:
    ``weight ~= q * scale[:, None]``."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / levels).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-levels, levels).to(torch.int8)
    return q, scale


_CUDA_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows


def int8_linear_any_rows(x: torch.Tensor, qweight: torch.Tensor,
                         scale: torch.Tensor) -> torch.Tensor:
    rows = x.shape[0]
    if x.is_cuda and rows < _CUDA_MIN_ROWS:
        padded = torch.zeros(_CUDA_MIN_ROWS, x.shape[1], dtype=x.dtype, device=x.device)
        padded[:rows] = x
        return int8_linear(padded, qweight, scale)[:rows].to(x.dtype)
    return int8_linear(x, qweight, scale).to(x.dtype)


class Int8Linear(LinearLayer):
    """A bias-free linear layer with int8 weights and per-token int8 activations."""

    fuse_with_neighbours = True  # the per-token quantize and dequantize passes

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features,
                                                    dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f)
        q, scale = quantize_per_channel(weight, weight_levels(weight.device))
        layer.qweight = q.to(weight.device)
        layer.scale = scale.to(weight.device)
        return layer

    def pack(self) -> None:
        """Chooses the process's int8 kernel (int8.py) before the first step, so
        that the timing never runs inside a compiled graph."""
        if self.qweight.device.type == "cpu":
            int8_kernel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear_any_rows(x, self.qweight, self.scale)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class BF16Linear(LinearLayer):
    """bfloat16 weights and matmul inputs, float32 accumulation, bfloat16 out. The output stays
    bf16 so that the activations between two matmuls (the FFN's SwiGLU) are never cast back
    and forth: every cast is a full pass over the activations, and at AMX speeds the casts
    cost as much as the matmuls. The residual stream, norms, RoPE and attention around it stay
    float32 (adding a bf16 output to a float32 tensor gives float32)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features,
                                                   dtype=torch.bfloat16))
        self._packed: torch.Tensor | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> BF16Linear:
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f)
        layer.weight = weight.detach().to(torch.bfloat16)
        return layer

    def pack(self) -> None:
        self._packed = pack_weight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)  # no copy when it already is
        if self._packed is not None:
            return onednn_linear(x, self._packed)
        return F.linear(x, self.weight)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


def quantize_int4_groups(weight: torch.Tensor, group: int = INT4_GROUP
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of ``group`` inputs. Returns codes ``[N, K]`` uint8 in 0..15
    and ``[K // group, N, 2]`` (scale, zero) in the layout of ``_weight_int4pack_mm``, where
    ``w = (q - 8) * scale + zero``."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    zero = lo + 8 * scale
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [K/g, N, 2]
    return q.reshape(n, k), sz


class Int4Linear(LinearLayer):
    """Weight-only int4 in groups; the matmul dequantizes inside the kernel."""

    def __init__(self, in_features: int, out_features: int, group: int = INT4_GROUP) -> None:
        super().__init__()
        if in_features % group:
            raise ValueError(f"int4 needs in_features divisible by {group}, not {in_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.group = group
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("scale_zero", torch.zeros(in_features // group, out_features, 2))
        self._packed: torch.Tensor | None = None
        self._sz: torch.Tensor | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, group: int = INT4_GROUP) -> Int4Linear:
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, group)
        layer.codes, layer.scale_zero = quantize_int4_groups(weight, group)
        return layer

    def pack(self) -> None:
        if self.codes.device.type != "cpu":  # no CUDA int4 kernel wired in: see forward
            self._packed = None
            return
        codes = self.codes.to(torch.int32)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        self._sz = self.scale_zero.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # correct, not fast: dequantize and multiply
            return F.linear(x, self.dequantized().to(x.dtype))
        if self._packed is None:
            self.pack()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), self._packed, self.group, self._sz)
        return out.to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        n, k = self.codes.shape
        sz = self.scale_zero.transpose(0, 1)  # [N, K/g, 2]
        q = self.codes.float().reshape(n, k // self.group, self.group)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).reshape(n, k)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 groups of {self.group}")


LAYER_LINEARS = ("wqkv", "wo", "w_gate", "w_up", "w_down")


def quantize_layers(model: nn.Module, scheme: str,
                    keep_float: frozenset[str] = frozenset()) -> None:
    """Replaces the decoder layers' linears in place (``scheme`` int8, int4, bf16 or fp8); the
    embedding and output head stay float. ``keep_float`` names linears (e.g. ``"w_down"``, or
    ``"3.w_down"`` for one layer) left as they are."""
    make = {"int8": Int8Linear.from_float, "int4": Int4Linear.from_float,
            "bf16": BF16Linear.from_float, "fp8": FP8Linear.from_float}[scheme]
    for i, layer in enumerate(model.layers):  # type: ignore[union-attr]
        for name in LAYER_LINEARS:
            if name in keep_float or f"{i}.{name}" in keep_float:
                continue
            new = make(getattr(layer, name).dequantized())
            new.pack()
            setattr(layer, name, new)
