"""Matmul kernels for the linear layers.

On AMD CPUs PyTorch's default fp32 GEMM (MKL) runs at a fraction of the speed of oneDNN's JIT
kernels on a weight pre-packed into their blocked layout, with the same fp32 arithmetic; on
Intel CPUs the two are even (bench/kernels.py). So CPU fp32 linears pack their weight once
and call oneDNN; every other device or dtype uses ``F.linear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import LinearLayer

_PACK_BATCH_HINT = 64  # oneDNN picks its blocking for this many rows; any row count works


def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


def pack_weight(w: torch.Tensor) -> torch.Tensor | None:
    """``w`` in oneDNN's blocked layout for ``onednn_linear``, or None where oneDNN does not
    run (other devices, no oneDNN build, or bf16 on a CPU without AVX-512 or AVX-NE-CONVERT,
    where oneDNN refuses to pack it and ``F.linear`` serves)."""
    if w.device.type != "cpu" or not onednn_available():
        return None
    if w.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), _PACK_BATCH_HINT)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        # inside an inductor graph (a float linear kept in an int8 layer's fused graph),
        # inductor's mkldnn fusion would rewrite the call and its residual add into
        # linear_binary, which asserts that the weight is a frozen constant, and crashed
        # the compile; as an opaque op the call stays as it is
        return torch.ops.llmq.onednn_linear(x, packed)
    return _linear_pointwise(x, packed)


def _linear_pointwise(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@torch.library.custom_op("llmq::onednn_linear", mutates_args=())
def _onednn_linear_op(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return _linear_pointwise(x, packed)


@_onednn_linear_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])


class Linear(nn.Linear, LinearLayer):
    """``nn.Linear`` without bias that can pre-pack its weight for oneDNN."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._packed: torch.Tensor | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Linear:
        layer = cls(weight.shape[1], weight.shape[0])
        layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
        return layer

    def pack(self) -> None:
        w = self.weight
        self._packed = pack_weight(w) if w.dtype == torch.float32 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return onednn_linear(x, self._packed)
        return F.linear(x, self.weight)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float()
