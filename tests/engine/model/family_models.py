"""Tiny random-weight checkpoints of every family llmq runs, built offline by transformers
from a config (``save_pretrained`` to safetensors), with SmolLM2's tokenizer: the references
for the families' parity tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.engine.tiny import add_smollm2_tokenizer, llama_cpp_permute, smollm2_tokenizer

# small enough to run in a second, shaped to exercise what sets each family apart: a head
# dimension other than hidden / heads, windows shorter than the prompts, more than one RoPE
_COMMON: dict[str, Any] = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                               pad_token_id=None)
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": dict(cls="LlamaConfig", tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(cls="MistralConfig", sliding_window=8, tie_word_embeddings=False),
    "qwen2": dict(cls="Qwen2Config", tie_word_embeddings=True),
    "qwen3": dict(cls="Qwen3Config", head_dim=32, tie_word_embeddings=True),
    # YaRN (Qwen's long-context recipe): interpolated frequencies and an attention factor
    "qwen3-yarn": dict(cls="Qwen3Config", head_dim=32, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                        "factor": 8.0, "original_max_position_embeddings": 64}),
    # Phi-3.5-mini's shape: fused projections, longrope (short factors within the original
    # context of 64, which llmq keeps as its context), a window over every layer
    "phi3": dict(cls="Phi3Config", tie_word_embeddings=False, sliding_window=12,
                 original_max_position_embeddings=64, rope_parameters={
                     "rope_type": "longrope", "rope_theta": 10000.0,
                     "short_factor": [1.0 + 0.15 * i for i in range(8)],
                     "long_factor": [3.0 + 0.5 * i for i in range(8)]}),
    # Phi-4-mini's: RoPE on three quarters of each head (12 of 16 channels), longrope, a
    # tied head
    "phi4-mini": dict(cls="Phi3Config", tie_word_embeddings=True,
                      original_max_position_embeddings=64, rope_parameters={
                          "rope_type": "longrope", "rope_theta": 10000.0,
                          "partial_rotary_factor": 0.75,
                          "short_factor": [1.0 + 0.2 * i for i in range(6)],
                          "long_factor": [3.0 + 0.5 * i for i in range(6)]}),
    "gemma2": dict(cls="Gemma2Config", head_dim=16, query_pre_attn_scalar=24,
                   sliding_window=8, attn_logit_softcapping=2.0, final_logit_softcapping=8.0,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "gemma3": dict(cls="Gemma3TextConfig", head_dim=32, query_pre_attn_scalar=32,
                   sliding_window=8,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                   rope_parameters={
                       "full_attention": {"rope_type": "linear", "factor": 4.0,
                                          "rope_theta": 1_000_000.0},
                       "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
}


def hf_family_config(family: str, vocab_size: int, **overrides: Any) -> Any:
    import transformers

    fields = {**_COMMON, **FAMILIES[family], **overrides}
    cls = getattr(transformers, fields.pop("cls"))
    return cls(vocab_size=vocab_size, **fields)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits are far from flat (transformers' initialisation gives
    near-uniform ones, where greedy tokens hang on rounding); norms around their identity
    (Gemma's x·(1 + w) at w = 0)."""
    g = torch.Generator().manual_seed(seed)
    gemma = "gemma" in type(model).__name__.lower()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.1 * noise)
            elif "embed" in name or "lm_head" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_((0.1 if name.endswith("bias") else 0.15) * noise)


def write_family_folder(path: Path, family: str, seed: int = 0,
                        **overrides: Any) -> tuple[Path, torch.nn.Module]:
    """The checkpoint folder and transformers' model on the same weights (eager attention,
    float32); ``overrides``: config fields other than the family's test ones."""
    from transformers import AutoModelForCausalLM

    tokenizer = smollm2_tokenizer()
    config = hf_family_config(family, tokenizer.vocab_size, **overrides)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    randomize(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer._tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": tokenizer.chat_template}))
    return path, model


# Hugging Face's names -> llama.cpp's (convert_hf_to_gguf.py), per layer
_GGUF_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
               "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GGUF_GEMMA_PARTS = {**_GGUF_PARTS, "post_attention_layernorm": "post_attention_norm",
                     "pre_feedforward_layernorm": "ffn_norm",
                     "post_feedforward_layernorm": "post_ffw_norm"}
_GGUF_PHI3_PARTS = {**_GGUF_PARTS, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
GGUF_FAMILIES = ("llama3", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi4-mini")
# llama.cpp's architecture for each family's checkpoints
_GGUF_ARCH = {"llama3": "llama", "phi3": "phi3", "phi4-mini": "phi3"}


def llama3_rope_freqs(rope: dict[str, Any], dim: int) -> np.ndarray:
    """Llama 3's scaling as llama.cpp's converter writes it (LlamaModel's
    generate_extra_tensors): a divisor per frequency, in float32."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_family_gguf(path: Path, family: str, model: torch.nn.Module) -> Path:
    """``model``'s weights as llama.cpp's converter writes a ``family`` checkpoint: its
    metadata keys, Q/K rows as they are (it reorders them for Llama only), Gemma's norms
    with their 1 added, Phi-3's fused projections as they are and its longrope factors as
    tensors, F32 tensors."""
    import gguf

    c = model.config
    gemma = family.startswith("gemma")
    phi3 = family.startswith("phi")
    arch = _GGUF_ARCH.get(family, family)
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_context_length(c.max_position_embeddings)
    wr.add_embedding_length(c.hidden_size)
    wr.add_block_count(c.num_hidden_layers)
    wr.add_feed_forward_length(c.intermediate_size)
    wr.add_head_count(c.num_attention_heads)
    wr.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if not phi3:  # its converter (Phi3MiniModel) writes no key or value length
        wr.add_key_length(head_dim)
        wr.add_value_length(head_dim)
    wr.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters.get("full_attention") or c.rope_parameters
    wr.add_rope_freq_base(rope["rope_theta"])
    if phi3:  # as Phi3MiniModel.set_gguf_parameters and generate_extra_tensors write them
        original = (rope.get("original_max_position_embeddings")
                    or c.original_max_position_embeddings)
        wr.add_rope_scaling_orig_ctx_len(original)
        partial = rope.get("partial_rotary_factor", 1.0)
        wr.add_rope_dimension_count(int(partial * c.hidden_size) // c.num_attention_heads)
        wr.add_sliding_window(c.sliding_window or 0)
        scale = c.max_position_embeddings / original
        wr.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        wr.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        wr.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    if rope.get("rope_type") == "llama3":  # Llama 3.1+: a tensor, no scaling metadata
        wr.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, head_dim))
    if rope.get("rope_type") == "linear":  # as the converter writes Gemma 3 4B's
        wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        wr.add_rope_scaling_factor(rope["factor"])
    if gemma:
        wr.add_sliding_window(c.sliding_window)
    if family == "gemma3":  # llama.cpp's Gemma 3 has 1 global layer in 6; these have 1 in 3
        wr.add_uint32("gemma3.attention.sliding_window_pattern", 3)
    if family == "gemma2":
        wr.add_attn_logit_softcapping(c.attn_logit_softcapping)
        wr.add_final_logit_softcapping(c.final_logit_softcapping)
    add_smollm2_tokenizer(wr)
    parts = _GGUF_GEMMA_PARTS if gemma else _GGUF_PHI3_PARTS if phi3 else _GGUF_PARTS
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    tied = c.tie_word_embeddings
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        arr = t.float().numpy()
        if gemma and name.endswith("norm.weight"):
            arr = arr + 1
        if arch == "llama" and name.endswith("q_proj.weight"):  # its RoPE is interleaved
            arr = llama_cpp_permute(arr, c.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, c.num_key_value_heads)
        if name.startswith("model.layers."):
            _, _, idx, rest = name.split(".", 3)
            part, _, suffix = rest.rpartition(".")
            gname = f"blk.{idx}.{parts[part]}.{suffix}"
        else:
            gname = names[name]
        wr.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path
