"""The forms attention takes outside llmq's native kernel: decode rows against the KV cache
(eager matmuls, or products and sums for inductor), prompt segments through PyTorch's fused
attention, Gemma 2's soft cap, and sliding-window masks as transformers draws them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

_compiled_decode: Callable[..., torch.Tensor] | None = None


def compiled_decode_attention(*args: torch.Tensor) -> torch.Tensor:
    """``decode_attention_reduced`` through inductor, compiled at its first call: a model
    whose decode rows all go through the native kernel never pays for importing the compiler
    (about a second of every start)."""
    global _compiled_decode
    if _compiled_decode is None:
        _compiled_decode = torch.compile(decode_attention_reduced, dynamic=True)
    return _compiled_decode(*args)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """Attention for one query position per slot. q ``[S, K, G, E]`` (scaled), keys and
    values ``[S, K, L, E]`` in the cache's float dtype (an int8 cache dequantized first),
    bias ``[S, 1, 1, L]`` (0 or -inf); returns
    ``[S, K, G, E]`` in q's dtype. The eager form: two batched matmuls in q's dtype."""
    scores = torch.matmul(q, keys.to(q.dtype).transpose(-1, -2))  # [S, K, G, L]
    scores += bias
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, values.to(q.dtype))


def softcapped(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's soft cap of attention scores and logits: ``cap · tanh(scores / cap)``."""
    return torch.tanh(scores / cap) * cap


def softcapped_decode_attention(cap: float) -> Callable[..., torch.Tensor]:
    """``decode_attention`` with the scores capped before the mask, as Gemma 2 does."""
    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
        scores = softcapped(torch.matmul(q, keys.to(q.dtype).transpose(-1, -2)), cap) + bias
        return torch.matmul(torch.softmax(scores, dim=-1), values.to(q.dtype))
    return attend


def prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None, scale: float,
                     cap: float | None) -> torch.Tensor:
    """Attention of a prompt segment: q ``[1, H, n, E]``, k and v ``[1, K, m, E]``, mask
    ``[n, m]`` bool (None: causal, n == m). PyTorch's fused attention, or with a soft cap
    (which it cannot apply) the eager product."""
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              scale=scale, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = softcapped(torch.matmul(q, k.transpose(-1, -2)) * scale, cap)
    if mask is None:
        n = q.shape[2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril_()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def window_mask(start: int, n: int, window: int, device: torch.device) -> torch.Tensor:
    """Rows ``start .. start + n - 1`` of a causal mask over ``start + n`` positions that sees
    only the last ``window`` of them, its own included (transformers' sliding window)."""
    q = torch.arange(start, start + n, device=device)[:, None]
    k = torch.arange(start + n, device=device)[None, :]
    return (k <= q) & (k > q - window)


def decode_attention_reduced(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                             bias: torch.Tensor) -> torch.Tensor:
    """``decode_attention`` as products and sums, for inductor, which makes of each a loop
    over the cache that converts as it reads: a half-precision cache is read once at half
    the bytes and summed in float32, and the G query rows of a KV head share every read
    (faster than the eager matmuls: bench/kernels.py)."""
    scores = (q.unsqueeze(3) * keys.to(q.dtype).unsqueeze(2)).sum(-1) + bias  # [S, K, G, L]
    probs = torch.softmax(scores, dim=-1)
    return (probs.unsqueeze(-1) * values.to(q.dtype).unsqueeze(2)).sum(3)
