"""Rotary position embeddings in Hugging Face's half-split form, with the checkpoint's theta
and its linear or llama3 frequency scaling."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import ModelConfig


def rope_inv_freq(config: ModelConfig, theta: float | None = None,
                  scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """Inverse frequencies of the model's RoPE, or of the base and scaling given (a layer's
    own: ``ModelConfig.layer_rope``)."""
    dim = config.head_dim
    if theta is None:
        theta, scaling = config.rope_theta, config.rope_scaling
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = scaling or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {kind!r}")
    return inv.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's half-split RoPE, ``x * cos + rotate_half(x) * sin``, in two passes:
    swapping the halves is a flip, and the sign of ``rotate_half`` lives in ``signed_sin``.
    x: [T, heads, E]; cos, signed_sin: [T, 1, E]."""
    n, heads, dim = x.shape
    swapped = x.reshape(n, heads, 2, dim // 2).flip(2).view(n, heads, dim)
    return torch.addcmul(x * cos, swapped, signed_sin)
