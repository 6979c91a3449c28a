"""A compact decoder of the Llama family's shape (RMSNorm, RoPE, grouped-query attention, a
gated MLP), with what Qwen and Gemma add to it as config fields (biases, q/k norms, Gemma's
norms, GELU, softcaps, windowed layers: families.py), that runs packed batches: every token
of every sequence in one flat ``[T, D]`` tensor, so the linear layers never see padding, and
attention reads each sequence's keys from a slot of a KV cache that is allocated once.

Shapes: T tokens in the step, D hidden, H query heads, K key/value heads, G = H // K,
E head dim, S cache slots, L cache positions per slot."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Fusing, ModelConfig
from ..host.threads import compute_threads
from ..kernels import native, rotated
from ..kernels.dense import Linear
from ..kernels.linear import LinearLayer, pack_linears
from .attention import (
    compiled_decode_attention,
    decode_attention,
    prompt_attention,
    softcapped,
    softcapped_decode_attention,
    window_mask,
)
from .checkpoint_names import layer_norm_names
from .head import OutputHead
from .kv_cache import KVCache, from_cache, to_cache
from .layer_halves import (
    LayerPaths,
    attention_input,
    attention_output_and_ffn,
    compile_on,
    compiled_halves,
)
from .rope import rope_attention_factor, rope_inv_freq
from .step_inputs import StepInputs

log = logging.getLogger(__name__)


class DecoderLayer(nn.Module):
    """One block, written once for every precision: the linears are ``LinearLayer``s of any
    precision, swapped in at build or load time; how the block runs (compiled or eager, which
    attention) is the model's ``LayerPaths``."""

    def __init__(self, config: ModelConfig, index: int = 0) -> None:
        super().__init__()
        c = config
        self.config = c
        self.window = c.layer_window(index)

        def norm(width: int, present: bool = True) -> nn.Parameter | None:
            return nn.Parameter(torch.ones(width), requires_grad=False) if present else None

        self.attn_norm = norm(c.hidden_size)
        self.ffn_norm = norm(c.hidden_size)
        # Gemma's norms of the attention's and the MLP's outputs; Qwen3's and Gemma 3's of
        # every q and k head (an RMSNorm as x·(1 + w) holds 1 + w: from_hf_weights)
        self.post_attn_norm = norm(c.hidden_size, c.gemma_norms)
        self.post_ffn_norm = norm(c.hidden_size, c.gemma_norms)
        self.q_norm = norm(c.head_dim, c.qk_norm)
        self.k_norm = norm(c.head_dim, c.qk_norm)
        qkv_out = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        # Qwen2's biases stay out of the linear, so that every precision keeps its contract
        self.qkv_bias = (nn.Parameter(torch.zeros(qkv_out), requires_grad=False)
                         if c.attention_bias else None)
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
        k_cache, v_cache = cache  # [S, K, P, R] each, position p at p % P (kv_cache.py)
        c = self.config
        dim = c.head_dim
        kept = k_cache.shape[2]
        # a window at least the cache's length hides nothing (a ring is longer than its window)
        window = self.window if self.window and self.window < kept else None
        rows = step.cache_rows[kept]
        if paths.native_attention and c.attn_softcap is None:
            # one call writes the step's keys and values and attends every row, decode and
            # prompt alike: a prompt row is a row that sees its slot up to its own position,
            # which the call has just written (faster than PyTorch's flash attention on
            # prompts: bench/kernels.py), and the writes, the conversions to the cache's
            # dtype and q's scaling cost no eager passes of their own
            n_tok = q.shape[0]
            out = native.decode_attention(
                q.reshape(n_tok, c.num_kv_heads, c.group_size, dim).float(), k_cache, v_cache,
                step.row_slots, step.row_lengths, c.attention_scale, (k, v, rows),
                window or 0)
            return out.to(q.dtype).view_as(q)
        width = k_cache.shape[-1]
        k_cache.view(-1, width).index_copy_(0, rows, to_cache(k, k_cache.dtype))
        v_cache.view(-1, width).index_copy_(0, rows, to_cache(v, v_cache.dtype))
        attend = paths.decode_attention
        if c.attn_softcap is not None:
            attend = softcapped_decode_attention(c.attn_softcap)
        return self._attention(q, k, v, k_cache, v_cache, step, attend, window)

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                step: StepInputs, attend: Callable[..., torch.Tensor],
                window: int | None) -> torch.Tensor:
        """Attention of the step's decode rows ``q [B, H, E]``; returns ``[B, K, G, E]``. The G
        query heads that share a KV head act as G query rows, so keys and values are read once
        per KV head and never expanded."""
        c = self.config
        nd, kv_heads, group, dim = q.shape[0], c.num_kv_heads, c.group_size, c.head_dim
        qd = q.reshape(nd, kv_heads, group, dim) * c.attention_scale  # [B, K, G, E]
        span, length = step.decode_span, min(step.decode_len, k_cache.shape[2])
        if not step.decode_contiguous:
            full = qd.new_zeros(span, kv_heads, group, dim)
            full[step.decode_slots] = qd
            qd = full
        keys, values = k_cache[:span, :, :length], v_cache[:span, :, :length]
        if keys.dtype == torch.int8:  # PyTorch's forms read floats
            keys, values = from_cache(keys, q.dtype), from_cache(values, q.dtype)
        bias = (step.decode_bias if window is None else
                step.windowed_decode_bias(window, k_cache.shape[2]))
        od = attend(qd, keys, values, bias)
        return od if step.decode_contiguous else od[step.decode_slots]

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, step: StepInputs,
                   attend: Callable[..., torch.Tensor], window: int | None) -> torch.Tensor:
        c = self.config
        kv_heads, dim = c.num_kv_heads, c.head_dim
        out = torch.empty_like(q)
        nd = step.num_decode
        if nd:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, step, attend, window).reshape(
                nd, c.num_heads, dim)
        for seg in step.prefill:
            n = seg.end - seg.begin
            qs = q[seg.begin:seg.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, E]
            # the positions the segment's rows see begin at first (0 without a window)
            first = 0 if window is None else max(0, seg.start - window + 1)
            if seg.mask is None:  # nothing cached before it: this step's own keys, unrounded
                rows = slice(seg.begin * kv_heads, seg.end * kv_heads)
                # v leaves a bf16 linear in bf16, while RoPE has made q and k float32
                ks = k[rows].view(n, kv_heads, dim).transpose(0, 1).unsqueeze(0).to(q.dtype)
                vs = v[rows].view(n, kv_heads, dim).transpose(0, 1).unsqueeze(0).to(q.dtype)
            else:
                end = seg.start + n  # a ring's entries by index
                seen: slice | torch.Tensor = slice(first, end)
                if end > k_cache.shape[2]:
                    seen = torch.arange(first, end, device=q.device) % k_cache.shape[2]
                ks = from_cache(k_cache[seg.slot:seg.slot + 1, :, seen], q.dtype)
                vs = from_cache(v_cache[seg.slot:seg.slot + 1, :, seen], q.dtype)  # [1, K, m, E]
            mask = seg.mask
            if window is not None and seg.start + n > window:
                mask = window_mask(seg.start, n, window, q.device)[:, first:]
            os_ = prompt_attention(qs, ks, vs, mask, c.attention_scale,
                                   c.attn_softcap)  # [1, H, n, E]
            out[seg.begin:seg.end] = os_[0].transpose(0, 1)
        return out


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # given its weight, the embedding skips its random init, which on the meta device
        # imports torch's compiler (a second of every start)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size,
                                  _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size), requires_grad=False)
        self.lm_head: nn.Module = (
            Linear(config.hidden_size, config.vocab_size) if config.plain_head else
            OutputHead(config.hidden_size, config.vocab_size, config.head_rows,
                       config.head_scheme))
        # one RoPE per distinct (base, scaling) (Gemma 3: its local and global layers')
        ropes = [config.layer_rope(i) for i in range(config.num_layers)]
        self._ropes = list({repr(r): r for r in ropes}.values())
        self._layer_rope = [self._ropes.index(r) for r in ropes]
        self._rope_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.paths = LayerPaths()  # eager until choose_paths
        self._fusing: threading.Thread | None = None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def choose_paths(self, fuse: Fusing = "now", threads: int | None = None) -> LayerPaths:
        """How every layer runs from now on; called once, after the linears are in place.
        On CPU: attention (decode and prompt rows) through llmq's own kernel (native.py;
        decode through inductor's form and prompts through PyTorch's where it cannot be
        built), and the layers' halves through inductor where their linears ask for it (int8;
        CUDA runs its int8 GEMMs eagerly). ``fuse``: compile the halves now, or
        ``in_background`` while the first steps run eagerly (a worker serves seconds
        sooner: bench/startup.py), for steps of ``threads`` OpenMP threads (inductor builds
        its kernels for a thread count), or ``off`` (one short sequence is done sooner
        uncompiled)."""
        cpu = self.device.type == "cpu"
        fusing = cpu and fuse != "off" and any(
            isinstance(m, LinearLayer) and m.fuse_with_neighbours for m in self.layers.modules())
        self.paths = LayerPaths(
            halves=compiled_halves() if fusing and fuse == "now" else None,
            native_attention=cpu and native.serves(self.config, self.kv_dtype),
            decode_attention=compiled_decode_attention if cpu else decode_attention,
            rotated_producers=cpu and self.config.hidden_act == "silu"
            and not self.config.gemma_norms and all(rotated.fuses_producers(layer)
                                                    for layer in self.layers))
        if fusing and fuse == "in_background":
            self._fusing = threading.Thread(target=self._fuse_when_compiled,
                                            args=(self.paths, threads), daemon=True,
                                            name="llmq-compile")
            self._fusing.start()
        return self.paths

    def _fuse_when_compiled(self, paths: LayerPaths, threads: int | None) -> None:
        """Compiles the halves on a step of a few rows through the first layer (from
        inductor's cache when it holds them), then hands them to every layer's next step.
        Steps are already batch-dependent in their last bits (a row's sums depend on how
        many rows its GEMM runs), so the switch changes no guarantee. Should compiling fail,
        the layers stay eager: slower, never wrong."""
        try:
            torch.set_num_threads(threads or compute_threads())
            halves = compile_on(self.layers[0], self.dtype, paths.rotated_producers)
        except Exception:
            log.exception("compiling the int8 layers failed: they keep running eagerly")
            return
        self.paths = replace(paths, halves=halves)

    def wait_for_paths(self) -> LayerPaths:
        """The paths once a compile started in the background is done."""
        if self._fusing is not None:
            self._fusing.join()
            self._fusing = None
        return self.paths

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's storage: the config's choice, else the model's own dtype."""
        name = self.config.kv_cache_dtype
        return getattr(torch, name) if name else self.dtype

    def rope_tables(self, length: int, rope: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``[length, E]`` of the model's ``rope``-th RoPE, computed in
        float32, kept in the model's dtype."""
        cached = self._rope_cache.get(rope)
        if cached is None or cached[0].shape[0] < length:
            theta, scaling = self._ropes[rope]
            inv = rope_inv_freq(self.config, theta, scaling).to(self.device)
            t = torch.arange(length, device=self.device, dtype=torch.float32)
            freqs = torch.outer(t, inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            sin[:, : inv.shape[0]] *= -1  # rotate_half negates the first half
            scale = rope_attention_factor(scaling)  # YaRN's, applied as transformers does
            self._rope_cache[rope] = ((emb.cos() * scale).to(self.dtype),
                                      (sin * scale).to(self.dtype))
        return self._rope_cache[rope]

    @torch.inference_mode()
    def forward(self, step: StepInputs, cache: KVCache) -> torch.Tensor:
        """Runs the step, writing its keys/values into ``cache``; returns ``[N, V]`` float32
        logits for ``step.logits_rows``."""
        ropes = []
        for i in range(len(self._ropes)):
            cos_table, sin_table = self.rope_tables(cache.length, i)
            ropes.append((cos_table[step.positions].unsqueeze(1),  # [T, 1, E]
                          sin_table[step.positions].unsqueeze(1)))  # signed for apply_rope
        c = self.config
        x = self.embed(step.tokens)  # [T, D]
        if c.gemma_norms:  # scaled in the model's dtype, as Gemma's embedding does
            x = x * torch.tensor(c.hidden_size ** 0.5, dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            cos, sin = ropes[self._layer_rope[i]]
            x = layer(x, cos, sin, cache.layer(i), step, self.paths)
        x = x[step.logits_rows]  # [N, D]
        x = F.rms_norm(x, (c.hidden_size,), self.norm, c.rms_norm_eps)
        if isinstance(self.lm_head, OutputHead):
            logits = self.lm_head(x, self.embed.weight, step.scratch_logits)  # [N, V]
        else:
            logits = self.lm_head(x).float()  # [N, V]
        return logits if c.final_softcap is None else softcapped(logits, c.final_softcap)

    @classmethod
    def from_hf_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> LlamaModel:
        """Builds the model from Hugging Face tensor names, fusing Q, K and V (and their
        biases) into one matmul per layer. Gemma's norms, x·(1 + w), hold 1 + w."""
        with torch.device("meta"):
            model = cls(config)
        w = weights
        shift = 1.0 if config.gemma_norms else 0.0

        def norm(name: str) -> torch.Tensor:
            return w[name] + shift

        sd: dict[str, torch.Tensor] = {"embed.weight": w["model.embed_tokens.weight"],
                                       "norm": norm("model.norm.weight")}
        sd["lm_head.weight"] = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            for ours, theirs in layer_norm_names(config).items():
                sd[f"layers.{i}.{ours}"] = norm(p + theirs)
            sd[f"layers.{i}.wqkv.weight"] = torch.cat(
                [w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], dim=0)
            if config.attention_bias:
                sd[f"layers.{i}.qkv_bias"] = torch.cat(
                    [w[p + f"self_attn.{n}_proj.bias"] for n in "qkv"], dim=0)
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
