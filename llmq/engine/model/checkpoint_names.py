"""Hugging Face's tensor names and shapes for a config: what ``LlamaModel.from_hf_weights``
reads, and what the loader checks a checkpoint against before anything is built."""

from __future__ import annotations

from ..config import ModelConfig


def layer_norm_names(config: ModelConfig) -> dict[str, str]:
    """Each layer's norms: ours -> Hugging Face's name under ``model.layers.N.`` (Gemma's
    ``post_attention_layernorm`` norms the attention's output; Llama's is the MLP's input)."""
    names = {"attn_norm": "input_layernorm.weight"}
    if config.gemma_norms:
        names.update(ffn_norm="pre_feedforward_layernorm.weight",
                     post_attn_norm="post_attention_layernorm.weight",
                     post_ffn_norm="post_feedforward_layernorm.weight")
    else:
        names["ffn_norm"] = "post_attention_layernorm.weight"
    if config.qk_norm:
        names.update(q_norm="self_attn.q_norm.weight", k_norm="self_attn.k_norm.weight")
    return names


def hf_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape (the output
    head only where it is not tied)."""
    c = config
    d, e = c.hidden_size, c.head_dim
    q_out, kv_out = c.num_heads * e, c.num_kv_heads * e
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, d),
                                          "model.norm.weight": (d,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, d)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        for ours, theirs in layer_norm_names(c).items():
            shapes[p + theirs] = (e,) if ours in ("q_norm", "k_norm") else (d,)
        for n, out in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            shapes[p + f"self_attn.{n}_proj.weight"] = (out, d)
            if c.attention_bias:
                shapes[p + f"self_attn.{n}_proj.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (d, q_out)
        shapes[p + "mlp.gate_proj.weight"] = (c.intermediate_size, d)
        shapes[p + "mlp.up_proj.weight"] = (c.intermediate_size, d)
        shapes[p + "mlp.down_proj.weight"] = (d, c.intermediate_size)
    return shapes
