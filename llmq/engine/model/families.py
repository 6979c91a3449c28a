"""Which checkpoints llmq runs. The decoder implements the Llama family's maths (Llama 1-3
and Mistral: RMSNorm, RoPE, grouped-query attention, SwiGLU) and what sets Qwen2 (q, k, v
biases), Qwen3 (q/k norms), Gemma 2 and 3 (Gemma's norms, GELU, softcaps, windowed
layers, two RoPE bases) and Phi-3 and Phi-4-mini (fused projections, split at load;
longrope; RoPE on part of each head) apart from it,
as ``ModelConfig`` fields; a checkpoint of another
family, or one whose config asks for maths the decoder does not do, is refused with what is
missing, at import and at load, never run as if it were another family."""

from __future__ import annotations

from typing import Any

from ..config import (
    ACTIVATIONS,
    FAMILY_OF_MODEL_TYPE,
    gguf_head_widths,
    hidden_activation,
    llama3_scaling_of,
    partial_rotary_factor,
    rope_parameters,
)
from .tokenizer import GGUF_PRE_TOKENIZERS, GGUF_TOKENIZER_MODELS

SUPPORTED_FAMILIES = tuple(FAMILY_OF_MODEL_TYPE)  # config.json's model_type
# GGUF architectures (general.architecture) llama.cpp writes for them: Mistral as "llama"
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3",
                               "phi3")
_WHY_NOT = {
    "gemma3": "Gemma 3's multimodal checkpoint (its text-only one, gemma3_text, runs)",
    "phimoe": "Phi-3.5-MoE's mixture of experts",
    "gemma": "Gemma 1",
}
# rope scalings rope.py computes (transformers' rope_type names)
# ("dynamic" is not: transformers recomputes its frequencies from the longest sequence of
# each batch, which a continuous batch cannot reproduce per sequence)
SUPPORTED_ROPE_SCALINGS = (None, "default", "linear", "llama3", "yarn", "longrope")
# model types whose attention turns part of each head only (Phi-4-mini's three quarters)
PARTIAL_ROTARY_FAMILIES = ("phi3",)


class UnsupportedModel(ValueError):
    """A checkpoint llmq cannot run faithfully; the message names the file and what is
    missing."""


def rope_kind(scaling: dict[str, Any] | None) -> str | None:
    scaling = scaling or {}
    return scaling.get("rope_type") or scaling.get("type")


def check_hf_config(raw: dict[str, Any], where: str) -> None:
    """Refuses a Hugging Face ``config.json`` whose family or features llmq does not run."""
    family = raw.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        arch = ", ".join(raw.get("architectures") or []) or "none named"
        why = f" ({_WHY_NOT[family]} not implemented)" if family in _WHY_NOT else ""
        raise UnsupportedModel(
            f"{where}: model family {family!r} ({arch}) is not supported{why}; llmq runs "
            f"{', '.join(SUPPORTED_FAMILIES)}")
    missing = []
    if raw.get("attention_bias"):
        missing.append("attention biases on every projection (attention_bias)")
    if raw.get("mlp_bias"):
        missing.append("MLP biases (mlp_bias)")
    act = hidden_activation(raw)
    if act not in ACTIVATIONS:
        missing.append(f"activation {act!r} (hidden_act)")
    if raw.get("use_bidirectional_attention"):
        missing.append("bidirectional attention (use_bidirectional_attention)")
    params = rope_parameters(raw)
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    for layer_type, layer_params in (nested or {"": params}).items():
        kind = rope_kind(layer_params)
        where_kind = f"rope_parameters.{layer_type}" if layer_type else "rope_scaling"
        if kind not in SUPPORTED_ROPE_SCALINGS:
            missing.append(f"rope scaling {kind!r} ({where_kind})")
        elif layer_type == "sliding_attention" and kind not in (None, "default"):
            missing.append(f"rope scaling {kind!r} on windowed layers ({where_kind})")
    partial = partial_rotary_factor(raw)
    if partial != 1.0:
        head_dim = int(raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"])
        rotary = int(head_dim * partial)
        if family not in PARTIAL_ROTARY_FAMILIES:  # transformers' own layers would fail
            missing.append(f"a partial rotary factor of {partial} in a {family} model "
                           f"(partial_rotary_factor; llmq reads it for "
                           f"{', '.join(PARTIAL_ROTARY_FAMILIES)})")
        elif not 0 < rotary <= head_dim or rotary % 2:
            missing.append(f"a partial rotary factor of {partial}: {rotary} of {head_dim} "
                           f"channels is not an even, positive count (partial_rotary_factor)")
    types = set(raw.get("layer_types") or ()) - {"sliding_attention", "full_attention"}
    if types:
        missing.append(f"layer types {sorted(types)} (layer_types)")
    _refuse(where, family, missing)


def check_gguf_fields(fields: dict[str, Any], where: str,
                      frequency_factors: list[float] | None = None) -> None:
    """Refuses a GGUF file whose architecture or features llmq does not run.
    ``frequency_factors``: its ``rope_freqs`` tensor, Llama 3's scaling as llama.cpp writes
    it, run where it is one that a config could name (``config.llama3_scaling_of``)."""
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedModel(f"{where}: model architecture {arch!r} is not supported; llmq "
                               f"runs {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")
    missing = []
    tokenizer = fields.get("tokenizer.ggml.model")
    pre = fields.get("tokenizer.ggml.pre", "default")
    if tokenizer not in GGUF_TOKENIZER_MODELS:
        missing.append(f"tokenizer {tokenizer!r} (tokenizer.ggml.model; llmq reads "
                       f"{', '.join(GGUF_TOKENIZER_MODELS)})")
    elif tokenizer == "gpt2" and pre not in GGUF_PRE_TOKENIZERS:
        missing.append(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre; llmq reads "
                       f"{', '.join(p for p in GGUF_PRE_TOKENIZERS if p)})")
    head_dim, turned = gguf_head_widths(fields, arch)
    if frequency_factors is not None:
        theta = float(fields.get(f"{arch}.rope.freq_base", 10000.0))
        if llama3_scaling_of(frequency_factors, turned, theta) is None:
            missing.append("per-frequency rope factors that no Llama 3 rope scaling gives "
                           "(rope_freqs)")
    kind = fields.get(f"{arch}.rope.scaling.type")
    if kind not in (None, "none", "linear"):
        missing.append(f"rope scaling {kind!r} ({arch}.rope.scaling.type)")
    if turned and head_dim and turned != head_dim:
        if arch not in PARTIAL_ROTARY_FAMILIES:
            missing.append(f"RoPE on {turned} of each head's {head_dim} channels "
                           f"({arch}.rope.dimension_count)")
        elif turned % 2 or not 0 < turned < head_dim:
            missing.append(f"RoPE on {turned} of each head's {head_dim} channels, not an "
                           f"even count below it ({arch}.rope.dimension_count)")
    _refuse(where, arch, missing)


def _refuse(where: str, family: str, missing: list[str]) -> None:
    if missing:
        raise UnsupportedModel(f"{where}: this {family} checkpoint needs what llmq does not "
                               f"implement: {'; '.join(missing)}")
