"""The two halves of a decoder layer around its attention (RMSNorm, QKV and RoPE before it;
output projection, residual and gated MLP after), and how every layer of a model runs them:
eagerly, or compiled by inductor once per process, now or on a background thread
(``LlamaModel.choose_paths``). Their own module because the compiled forms, the paths and the
warm-up step that compiles them are one job, apart from the decoder's weights and cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..kernels import rotated
from .attention import decode_attention
from .rope import apply_rope

# the layer of every function here is a decoder.DecoderLayer (its weights, norms and config),
# named loosely so that this module does not import the decoder that imports it
DecoderLayer = Any

FusedHalves = tuple[Callable[..., Any], Callable[..., Any]]
_compiled: FusedHalves | None = None
# rows of the step that compiles the halves in the background: at least 2 (one row runs
# eagerly), and no width of a model's, which dynamo would tie the row count to
_WARM_ROWS = 7


def compiled_halves() -> FusedHalves:
    """The two halves of a decoder layer compiled once per process and shared by every layer
    (dynamic shapes: one graph serves every step size)."""
    global _compiled
    if _compiled is None:
        _compiled = (torch.compile(attention_input, dynamic=True),
                     torch.compile(attention_output_and_ffn, dynamic=True))
    return _compiled


@dataclass(frozen=True)
class LayerPaths:
    """How every decoder layer of a model runs, chosen once for the whole model after its
    linears are in place (``LlamaModel.choose_paths``)."""

    # inductor-compiled forms of the two halves around attention (layers whose linears want
    # fusing: int8), or None: the eager functions
    halves: FusedHalves | None = None
    # llmq's native kernel writes the step's keys and values and attends every row, decode
    # and prompt alike; otherwise decode rows go through ``decode_attention`` and prompt rows
    # through PyTorch's scaled_dot_product_attention
    native_attention: bool = False
    decode_attention: Callable[..., torch.Tensor] = field(
        default_factory=lambda: decode_attention)
    # rotated int8 linears whose norms and SwiGLU rotate and quantize their input natively
    rotated_producers: bool = False


def attention_input(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    rotated_producers: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm, the QKV projection and RoPE: ``[T, D]`` -> q ``[T, H, E]``, k and v
    ``[T * K, E]``."""
    c = layer.config
    n_tok = x.shape[0]
    heads, kv_heads, dim = c.num_heads, c.num_kv_heads, c.head_dim
    if rotated_producers:
        qkv = rotated.rotated_qkv(layer, x)
    else:
        qkv = layer.wqkv(F.rms_norm(x, (c.hidden_size,), layer.attn_norm, c.rms_norm_eps))
    if layer.qkv_bias is not None:
        qkv = qkv + layer.qkv_bias
    # qkv: [T, (H + 2K) * E]
    k_end = (heads + kv_heads) * dim
    qk = qkv[:, :k_end].reshape(n_tok, heads + kv_heads, dim)
    if layer.q_norm is not None:  # per head, over its E channels
        qk = torch.cat((F.rms_norm(qk[:, :heads], (dim,), layer.q_norm, c.rms_norm_eps),
                        F.rms_norm(qk[:, heads:], (dim,), layer.k_norm, c.rms_norm_eps)), 1)
    qk = apply_rope(qk, cos, sin)
    return (qk[:, :heads], qk[:, heads:].reshape(n_tok * kv_heads, dim),
            qkv[:, k_end:].reshape(n_tok * kv_heads, dim))


def attention_output_and_ffn(layer: DecoderLayer, x: torch.Tensor, attn: torch.Tensor,
                             rotated_producers: bool = False) -> torch.Tensor:
    """The rest of the layer: output projection and residual, RMSNorm, gated MLP, residual
    (Gemma: each branch normed again before its residual). ``x [T, D]`` is left as it is
    (calibration hooks read it); ``attn`` is ``[T, H * E]``."""
    c = layer.config
    width = (c.hidden_size,)
    out = layer.wo(attn)
    if layer.post_attn_norm is not None:
        out = F.rms_norm(out, width, layer.post_attn_norm, c.rms_norm_eps)
    x = x + out
    if rotated_producers:
        return x.add_(rotated.rotated_ffn(layer, x))
    h = F.rms_norm(x, width, layer.ffn_norm, c.rms_norm_eps)
    gate = layer.w_gate(h)
    if c.hidden_act == "silu":
        gate = F.silu(gate, inplace=True)
    else:
        gate = F.gelu(gate, approximate="tanh")
    out = layer.w_down(gate.mul_(layer.w_up(h)))  # gate: [T, F]
    if layer.post_ffn_norm is not None:
        out = F.rms_norm(out, width, layer.post_ffn_norm, c.rms_norm_eps)
    return x.add_(out)


def compile_on(layer: DecoderLayer, dtype: torch.dtype, rotated_producers: bool) -> FusedHalves:
    """The compiled halves, compiled (or read from inductor's cache) by one step of a few
    zero rows through ``layer``, under inference mode as the model's steps run."""
    halves = compiled_halves()
    c = layer.config
    with torch.inference_mode():
        x = torch.zeros(_WARM_ROWS, c.hidden_size, dtype=dtype)
        cos = torch.zeros(_WARM_ROWS, 1, c.head_dim, dtype=dtype)
        q, _, _ = halves[0](layer, x, cos, cos, rotated_producers)
        halves[1](layer, x, torch.zeros_like(q).view(_WARM_ROWS, -1), rotated_producers)
    return halves
