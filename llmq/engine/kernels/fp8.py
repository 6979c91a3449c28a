"""fp8 linears for GPUs: float8 e4m3 weights with one scale per output channel and
activations cast to e4m3 per token at run time, multiplied on the tensor cores by
``torch._scaled_mm`` with row-wise scales (float32 accumulation, bfloat16 out). Hopper and
later (compute capability 8.9+) run fp8 matmuls at twice the bf16 rate and read half the
bytes of weight. That pays only where the matmuls dominate: at SmolLM2's size the engine
is bound by kernel launches on a GPU, and fp8 served the shared workload slower than bf16
(bench/gpu.py's figures in bench/BENCHMARKS.md), so bf16 is the GPU recipe there.

Anywhere else (CPU, older GPUs) the layer computes the same quantized numbers in float: the
cast to e4m3 and back is exact arithmetic on every device, so CPU tests check the maths the
GPU runs, up to the order of summation; it is correct there, not fast."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import LinearLayer

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
_ROW_MULTIPLE = 16  # _scaled_mm wants every dimension a multiple of 16


def fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 with a float32 scale ``[rows, 1]``: ``x ~= q.float() * scale``."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


class FP8Linear(LinearLayer):
    """A bias-free linear layer with e4m3 weights and per-token e4m3 activations."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> FP8Linear:
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f)
        q, scale = quantize_fp8(weight.detach())
        layer.weight, layer.scale = q, scale.squeeze(1)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, x_scale = quantize_fp8(x)
        if not fp8_tensor_cores(x.device):
            return F.linear(xq.float() * x_scale, self.dequantized()).to(x.dtype)
        rows = xq.shape[0]
        pad = -rows % _ROW_MULTIPLE
        if pad:
            xq = F.pad(xq.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
            x_scale = F.pad(x_scale, (0, 0, 0, pad), value=1.0)
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale,
                               scale_b=self.scale[None, :], out_dtype=torch.bfloat16)
        return out[:rows].to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"
