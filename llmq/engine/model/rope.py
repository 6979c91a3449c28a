"""Rotary position embeddings in Hugging Face's half-split form, with the checkpoint's theta
and its linear, llama3, yarn or longrope frequency scaling (as transformers'
modeling_rope_utils)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import ModelConfig


def rope_inv_freq(config: ModelConfig, theta: float | None = None,
                  scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """Inverse frequencies of the model's RoPE, or of the base and scaling given (a layer's
    own: ``ModelConfig.layer_rope``), over the channels it turns (``rope_dim``)."""
    dim = config.rope_dim
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
    elif kind == "yarn":
        return _yarn_inv_freq(config, theta, scaling)
    elif kind == "longrope":  # the short factors only (config.longrope_short)
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (torch.tensor(scaling["short_factor"], dtype=torch.float32) * theta ** shape)
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {kind!r}")
    return inv.float()


def _yarn_inv_freq(config: ModelConfig, theta: float, scaling: dict[str, Any]) -> torch.Tensor:
    """YaRN's frequencies as transformers' ``_compute_yarn_parameters`` computes them (in
    float32, as it does): interpolated below a band of wavelengths, extrapolated above it,
    blended by a linear ramp across it."""
    dim = config.rope_dim
    factor = float(scaling["factor"])
    original = float(scaling.get("original_max_position_embeddings")
                     or config.max_position_embeddings)
    beta_fast = float(scaling.get("beta_fast") or 32)
    beta_slow = float(scaling.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolated = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolated) + (1.0 / pos_freqs) * extrapolated


def rope_attention_factor(scaling: dict[str, Any] | None) -> float:
    """What cos and sin are multiplied by: YaRN's attention factor (from ``factor``,
    ``mscale`` and ``mscale_all_dim`` where the config does not give it), longrope's, else 1."""
    scaling = scaling or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "longrope":  # computed when the config was read (config.longrope_short)
        return float(scaling["attention_factor"])
    if kind != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = float(scaling["factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if m and m_all:
        return mscale(factor, float(m)) / mscale(factor, float(m_all))
    return mscale(factor)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's half-split RoPE, ``x * cos + rotate_half(x) * sin``, in two passes:
    swapping the halves is a flip, and the sign of ``rotate_half`` lives in ``signed_sin``.
    x: [T, heads, E]; cos, signed_sin: [T, 1, R], R <= E: a partial RoPE turns the first R
    channels of each head and passes the rest through, as transformers' Phi-3 does."""
    n, heads, dim = x.shape
    turned = cos.shape[-1]
    if turned < dim:
        return torch.cat((apply_rope(x[..., :turned], cos, signed_sin), x[..., turned:]), -1)
    swapped = x.reshape(n, heads, 2, dim // 2).flip(2).view(n, heads, dim)
    return torch.addcmul(x * cos, swapped, signed_sin)
