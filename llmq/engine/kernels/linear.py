"""The contract every linear layer of a decoder layer keeps, whatever its precision (float,
bf16, int8, rotated int8, int4, fp8): the decoder's maths is written once against it, and a
precision is chosen at build or load time by swapping one layer for another
(``quantized.quantize_layers``), never by type checks in a forward pass."""

from __future__ import annotations

from typing import ClassVar, Self

import torch
from torch import nn


class LinearLayer(nn.Module):
    """A bias-free ``y = x W^T`` of ``in_features`` to ``out_features``.

    - ``from_float`` builds the layer from a float weight ``[out, in]`` (quantizing it);
    - ``pack`` prepares the weight for the kernel this process runs on its device (a blocked
      layout, the int8 GEMM's choice), once, after the layer is built or loaded;
    - ``dequantized`` gives back the float weight the layer computes with, for fidelity
      measurements and model surgery;
    - ``fuse_with_neighbours``: the layer's quantize and dequantize passes cost more than its
      GEMM as separate eager ops, so the decoder layer around it is worth compiling with
      inductor (``LlamaModel.choose_paths``)."""

    in_features: int
    out_features: int
    fuse_with_neighbours: ClassVar[bool] = False

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Self:
        raise NotImplementedError

    def pack(self) -> None:
        """Nothing to prepare, unless a kernel wants it."""

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError


def pack_linears(module: nn.Module) -> None:
    """Packs every linear layer of ``module`` for this process's kernels."""
    for m in module.modules():
        if isinstance(m, LinearLayer):
            m.pack()
