"""Tiny random-weight checkpoints of every family llmq runs, built offline by transformers
from a config (``save_pretrained`` to safetensors), with SmolLM2's tokenizer: the references
for the families' parity tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.engine.tiny import smollm2_tokenizer

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


def hf_family_config(family: str, vocab_size: int) -> Any:
    import transformers

    fields = {**_COMMON, **FAMILIES[family]}
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


def write_family_folder(path: Path, family: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """The checkpoint folder and transformers' model on the same weights (eager attention,
    float32)."""
    from transformers import AutoModelForCausalLM

    tokenizer = smollm2_tokenizer()
    config = hf_family_config(family, tokenizer.vocab_size)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    randomize(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer._tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": tokenizer.chat_template}))
    return path, model
