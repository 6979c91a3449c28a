"""The KV cache: keys and values of every layer, slot and position, allocated once, and the
conversions of a step's keys and values to and from its storage (float32, float16, bfloat16,
or int8 codes with a float32 scale per position and head)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..host.memory import zeros_lazily

_FLOAT16_MAX = 65504.0
_SCALE_BYTES = 4  # an int8 cache row ends in its float32 scale


def cache_row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements of one cached position of one head: the head's values, and for int8 the 4
    bytes of their float32 scale."""
    return head_dim + (_SCALE_BYTES if dtype == torch.int8 else 0)


def to_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x [N, E]`` as rows of the cache's dtype. float16 saturates rather than overflows:
    one infinite key would turn the masked products of decode attention (0 x inf) into NaN.
    int8 rows are the codes of ``x / s``, ``s = max |x| / 127`` per row (rounded to nearest
    even), followed by ``s`` as 4 bytes: ``[N, E + 4]``; the native kernel writes the same."""
    if dtype == torch.int8:
        x = x.float()
        top = x.abs().amax(-1, keepdim=True)
        scale = torch.where(top > 0, top, 1.0) / 127
        codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return torch.cat([codes, scale.view(torch.int8)], dim=-1)
    if dtype == torch.float16 and x.dtype != dtype:
        x = x.clamp(-_FLOAT16_MAX, _FLOAT16_MAX)
    return x.to(dtype)


def from_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cached rows ``[..., R]`` as ``[..., E]`` of ``dtype`` (for the paths that attend in
    PyTorch; the native kernel reads the cache as it is)."""
    if x.dtype != torch.int8:
        return x.to(dtype)
    dim = x.shape[-1] - _SCALE_BYTES
    scale = x[..., dim:].contiguous().view(torch.float32)  # [..., 1]
    return (x[..., :dim].float() * scale).to(dtype)


class KVCache(nn.Module):
    """Keys and values of every layer and slot, allocated once: ``[layers, 2, S, K, L, R]``,
    R the width of a cached row (``cache_row_width``: E, or E + 4 for int8).

    It must start as zeros: decode attention reads every slot up to the longest one and masks
    the rest, and a masked NaN left in never-written memory would still poison the product.
    On CPU the zeros come from calloc (via numpy), which maps zero pages lazily, so the OS
    commits only the pages that steps write, however large the cache."""

    def __init__(self, config: ModelConfig, slots: int, length: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        shape = (config.num_layers, 2, slots, config.num_kv_heads, length,
                 cache_row_width(config.head_dim, dtype))
        self.register_buffer("kv", zeros_lazily(shape, dtype, device), persistent=False)
        self.slots = slots
        self.length = length

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv[index, 0], self.kv[index, 1]
