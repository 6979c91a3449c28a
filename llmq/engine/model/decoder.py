"""A compact Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) that runs
packed batches: every token of every sequence in one flat ``[T, D]`` tensor, so the linear
layers never see padding, and attention reads each sequence's keys from a slot of a KV cache
that is allocated once.

Shapes: T tokens in the step, D hidden, H query heads, K key/value heads, G = H // K,
E head dim, S cache slots, L cache positions per slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..kernels import native, rotated
from ..kernels.dense import Linear
from ..kernels.linear import LinearLayer, pack_linears
from .head import OutputHead
from .kv_cache import KVCache, from_cache, to_cache
from .rope import apply_rope, rope_inv_freq

FusedHalves = tuple[Callable[..., Any], Callable[..., Any]]
_compiled: FusedHalves | None = None
_compiled_decode: Callable[..., torch.Tensor] | None = None


def compiled_halves() -> FusedHalves:
    """The two halves of a decoder layer compiled once per process and shared by every layer
    (dynamic shapes: one graph serves every step size)."""
    global _compiled
    if _compiled is None:
        _compiled = (torch.compile(attention_input, dynamic=True),
                     torch.compile(attention_output_and_ffn, dynamic=True))
    return _compiled


def compiled_decode_attention() -> Callable[..., torch.Tensor]:
    global _compiled_decode
    if _compiled_decode is None:
        _compiled_decode = torch.compile(decode_attention_reduced, dynamic=True)
    return _compiled_decode


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


def decode_attention_reduced(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                             bias: torch.Tensor) -> torch.Tensor:
    """``decode_attention`` as products and sums, for inductor, which makes of each a loop
    over the cache that converts as it reads: a half-precision cache is read once at half
    the bytes and summed in float32, and the G query rows of a KV head share every read
    (faster than the eager matmuls: bench/kernels.py)."""
    scores = (q.unsqueeze(3) * keys.to(q.dtype).unsqueeze(2)).sum(-1) + bias  # [S, K, G, L]
    probs = torch.softmax(scores, dim=-1)
    return (probs.unsqueeze(-1) * values.to(q.dtype).unsqueeze(2)).sum(3)


@dataclass
class PrefillSegment:
    """One sequence's new tokens in a packed step: rows ``[begin, end)`` of the batch, written
    at cache positions ``[start, start + end - begin)`` of ``slot``."""

    begin: int
    end: int
    slot: int
    start: int
    mask: torch.Tensor | None  # [n, start + n] bool, None when start == 0 (plain causal)


@dataclass
class StepInputs:
    """Everything one forward pass needs, built once and shared by all layers."""

    tokens: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    cache_rows: torch.Tensor  # [T * K] long: rows of the cache viewed as [S * K * L, R]
    num_decode: int  # rows [0, num_decode) are one decode token each
    decode_slots: torch.Tensor | None  # [num_decode] long
    decode_span: int  # decode attention covers slots [0, decode_span)
    decode_contiguous: bool  # decode_slots == arange(num_decode) and decode_span == num_decode
    decode_bias: torch.Tensor | None  # [decode_span, 1, 1, decode_len]: 0 or -inf
    decode_len: int  # cache positions read by decode attention
    prefill: list[PrefillSegment]
    logits_rows: torch.Tensor  # [N] long: rows whose next-token logits are wanted
    # every row's slot and the cache positions it sees (its own position + 1): what the
    # native kernel needs to attend for decode and prompt rows alike, in one call
    row_slots: torch.Tensor  # [T] long
    row_lengths: torch.Tensor  # [T] long


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
    # qkv: [T, (H + 2K) * E]
    k_end = (heads + kv_heads) * dim
    qk = apply_rope(qkv[:, :k_end].reshape(n_tok, heads + kv_heads, dim), cos, sin)
    return (qk[:, :heads], qk[:, heads:].reshape(n_tok * kv_heads, dim),
            qkv[:, k_end:].reshape(n_tok * kv_heads, dim))


def attention_output_and_ffn(layer: DecoderLayer, x: torch.Tensor, attn: torch.Tensor,
                             rotated_producers: bool = False) -> torch.Tensor:
    """The rest of the layer: output projection and residual, RMSNorm, SwiGLU, residual.
    ``x [T, D]`` is left as it is (calibration hooks read it); ``attn`` is ``[T, H * E]``."""
    c = layer.config
    x = x + layer.wo(attn)
    if rotated_producers:
        return x.add_(rotated.rotated_ffn(layer, x))
    h = F.rms_norm(x, (c.hidden_size,), layer.ffn_norm, c.rms_norm_eps)
    act = F.silu(layer.w_gate(h), inplace=True).mul_(layer.w_up(h))  # [T, F]
    return x.add_(layer.w_down(act))


class DecoderLayer(nn.Module):
    """One block, written once for every precision: the linears are ``LinearLayer``s of any
    precision, swapped in at build or load time; how the block runs (compiled or eager, which
    attention) is the model's ``LayerPaths``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.attn_norm = nn.Parameter(torch.ones(c.hidden_size), requires_grad=False)
        self.ffn_norm = nn.Parameter(torch.ones(c.hidden_size), requires_grad=False)
        qkv_out = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.wqkv = Linear(c.hidden_size, qkv_out)
        self.wo = Linear(c.num_heads * c.head_dim, c.hidden_size)
        # gate and up stay separate: a fused output is split into strided halves whose
        # SiLU and product cost more than the extra matmul call saves
        self.w_gate = Linear(c.hidden_size, c.intermediate_size)
        self.w_up = Linear(c.hidden_size, c.intermediate_size)
        self.w_down = Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor], step: StepInputs,
                paths: LayerPaths) -> torch.Tensor:
        n_tok = x.shape[0]
        # one row is not worth a second graph specialised to it
        first, second = (attention_input, attention_output_and_ffn) if (
            paths.halves is None or n_tok < 2) else paths.halves
        q, k, v = first(self, x, cos, sin, paths.rotated_producers)
        attn = self._attend(q, k, v, cache, step, paths)  # [T, H, E]
        return second(self, x, attn.view(n_tok, -1), paths.rotated_producers)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor], step: StepInputs,
                paths: LayerPaths) -> torch.Tensor:
        """Writes the step's keys and values into the cache, then attends over it."""
        k_cache, v_cache = cache  # [S, K, L, R] each (kv_cache.py)
        c = self.config
        dim = c.head_dim
        if paths.native_attention:
            # one call writes the step's keys and values and attends every row, decode and
            # prompt alike: a prompt row is a row that sees its slot up to its own position,
            # which the call has just written (faster than PyTorch's flash attention on
            # prompts: bench/kernels.py), and the writes, the conversions to the cache's
            # dtype and q's scaling cost no eager passes of their own
            n_tok = q.shape[0]
            out = native.decode_attention(
                q.reshape(n_tok, c.num_kv_heads, c.group_size, dim).float(), k_cache, v_cache,
                step.row_slots, step.row_lengths, dim ** -0.5, (k, v, step.cache_rows))
            return out.to(q.dtype).view_as(q)
        width = k_cache.shape[-1]
        k_cache.view(-1, width).index_copy_(0, step.cache_rows, to_cache(k, k_cache.dtype))
        v_cache.view(-1, width).index_copy_(0, step.cache_rows, to_cache(v, v_cache.dtype))
        return self._attention(q, k, v, k_cache, v_cache, step, paths.decode_attention)

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                step: StepInputs, attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Attention of the step's decode rows ``q [B, H, E]``; returns ``[B, K, G, E]``. The G
        query heads that share a KV head act as G query rows, so keys and values are read once
        per KV head and never expanded."""
        c = self.config
        nd, kv_heads, group, dim = q.shape[0], c.num_kv_heads, c.group_size, c.head_dim
        qd = q.reshape(nd, kv_heads, group, dim) * (dim ** -0.5)  # [B, K, G, E]
        span, length = step.decode_span, step.decode_len
        if not step.decode_contiguous:
            full = qd.new_zeros(span, kv_heads, group, dim)
            full[step.decode_slots] = qd
            qd = full
        keys, values = k_cache[:span, :, :length], v_cache[:span, :, :length]
        if keys.dtype == torch.int8:  # PyTorch's forms read floats
            keys, values = from_cache(keys, q.dtype), from_cache(values, q.dtype)
        od = attend(qd, keys, values, step.decode_bias)
        return od if step.decode_contiguous else od[step.decode_slots]

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, step: StepInputs,
                   attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        c = self.config
        kv_heads, dim = c.num_kv_heads, c.head_dim
        out = torch.empty_like(q)
        nd = step.num_decode
        if nd:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, step, attend).reshape(
                nd, c.num_heads, dim)
        for seg in step.prefill:
            n = seg.end - seg.begin
            qs = q[seg.begin:seg.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, E]
            if seg.mask is None:  # nothing cached before it: this step's own keys, unrounded
                rows = slice(seg.begin * kv_heads, seg.end * kv_heads)
                # v leaves a bf16 linear in bf16, while RoPE has made q and k float32
                ks = k[rows].view(n, kv_heads, dim).transpose(0, 1).unsqueeze(0).to(q.dtype)
                vs = v[rows].view(n, kv_heads, dim).transpose(0, 1).unsqueeze(0).to(q.dtype)
            else:
                end = seg.start + n
                ks = from_cache(k_cache[seg.slot:seg.slot + 1, :, :end], q.dtype)
                vs = from_cache(v_cache[seg.slot:seg.slot + 1, :, :end], q.dtype)  # [1, K, end, E]
            os_ = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=seg.mask, is_causal=seg.mask is None, enable_gqa=True
            )  # [1, H, n, E]
            out[seg.begin:seg.end] = os_[0].transpose(0, 1)
        return out


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size), requires_grad=False)
        self.lm_head: nn.Module = (
            Linear(config.hidden_size, config.vocab_size) if config.plain_head else
            OutputHead(config.hidden_size, config.vocab_size, config.head_rows,
                       config.head_scheme))
        self._rope_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.paths = LayerPaths()  # eager until choose_paths

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def choose_paths(self) -> LayerPaths:
        """How every layer runs from now on; called once, after the linears are in place.
        On CPU: attention (decode and prompt rows) through llmq's own kernel (native.py;
        decode through inductor's form and prompts through PyTorch's where it cannot be
        built), and the layers' halves through inductor where their linears ask for it (int8;
        CUDA runs its int8 GEMMs eagerly)."""
        cpu = self.device.type == "cpu"
        fuse = cpu and any(isinstance(m, LinearLayer) and m.fuse_with_neighbours
                           for m in self.layers.modules())
        self.paths = LayerPaths(
            halves=compiled_halves() if fuse else None,
            native_attention=cpu and native.serves(self.config, self.kv_dtype),
            decode_attention=compiled_decode_attention() if cpu else decode_attention,
            rotated_producers=cpu and all(rotated.fuses_producers(layer)
                                          for layer in self.layers))
        return self.paths

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's storage: the config's choice, else the model's own dtype."""
        name = self.config.kv_cache_dtype
        return getattr(torch, name) if name else self.dtype

    def rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``[length, E]``, computed in float32, kept in the model's dtype."""
        if self._rope_cache is None or self._rope_cache[0].shape[0] < length:
            inv = rope_inv_freq(self.config).to(self.device)
            t = torch.arange(length, device=self.device, dtype=torch.float32)
            freqs = torch.outer(t, inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            sin[:, : inv.shape[0]] *= -1  # rotate_half negates the first half
            self._rope_cache = (emb.cos().to(self.dtype), sin.to(self.dtype))
        return self._rope_cache

    @torch.inference_mode()
    def forward(self, step: StepInputs, cache: KVCache) -> torch.Tensor:
        """Runs the step, writing its keys/values into ``cache``; returns ``[N, V]`` float32
        logits for ``step.logits_rows``."""
        cos_table, sin_table = self.rope_tables(cache.length)
        cos = cos_table[step.positions].unsqueeze(1)  # [T, 1, E]
        sin = sin_table[step.positions].unsqueeze(1)  # signed for apply_rope
        x = self.embed(step.tokens)  # [T, D]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.layer(i), step, self.paths)
        x = x[step.logits_rows]  # [N, D]
        x = F.rms_norm(x, (self.config.hidden_size,), self.norm, self.config.rms_norm_eps)
        if isinstance(self.lm_head, OutputHead):
            return self.lm_head(x, self.embed.weight)  # [N, V]
        return self.lm_head(x).float()  # [N, V]

    @classmethod
    def from_hf_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> LlamaModel:
        """Builds the model from Hugging Face tensor names, fusing Q, K and V into one
        matmul per layer."""
        with torch.device("meta"):
            model = cls(config)
        w = weights
        sd: dict[str, torch.Tensor] = {"embed.weight": w["model.embed_tokens.weight"],
                                       "norm": w["model.norm.weight"]}
        sd["lm_head.weight"] = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            sd[f"layers.{i}.attn_norm"] = w[p + "input_layernorm.weight"]
            sd[f"layers.{i}.ffn_norm"] = w[p + "post_attention_layernorm.weight"]
            sd[f"layers.{i}.wqkv.weight"] = torch.cat(
                [w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], dim=0)
            sd[f"layers.{i}.wo.weight"] = w[p + "self_attn.o_proj.weight"]
            sd[f"layers.{i}.w_gate.weight"] = w[p + "mlp.gate_proj.weight"]
            sd[f"layers.{i}.w_up.weight"] = w[p + "mlp.up_proj.weight"]
            sd[f"layers.{i}.w_down.weight"] = w[p + "mlp.down_proj.weight"]
        sd = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in sd.items()}
        if config.tie_word_embeddings and "lm_head.weight" not in w:
            sd["lm_head.weight"] = sd["embed.weight"]
        model.load_state_dict(sd, assign=True, strict=True)
        for p in model.parameters():
            p.requires_grad_(False)
        pack_linears(model)
        return model.eval()
