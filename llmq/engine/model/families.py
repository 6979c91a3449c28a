"""Which checkpoints llmq runs. The decoder implements the Llama family's maths (Llama 1-3
and Mistral: RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases); a checkpoint of
another family, or one whose config asks for maths the decoder does not do, is refused with
what is missing, at import and at load, never run as if it were Llama."""

from __future__ import annotations

from typing import Any

from ..config import rope_scaling

SUPPORTED_FAMILIES = ("llama", "mistral")
# rope scalings rope.py computes (transformers' rope_type names)
SUPPORTED_ROPE_SCALINGS = (None, "default", "linear", "llama3")
# GGUF tensors that carry maths the decoder does not read
_GGUF_UNREAD_TENSORS = {
    "rope_freqs": "per-frequency rope factors (rope_freqs: Llama 3.1-style scaling as "
                  "llama.cpp writes it)",
}


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
        raise UnsupportedModel(
            f"{where}: model family {family!r} ({arch}) is not supported; llmq runs "
            f"{', '.join(SUPPORTED_FAMILIES)}")
    missing = []
    if raw.get("attention_bias"):
        missing.append("attention biases (attention_bias)")
    if raw.get("mlp_bias"):
        missing.append("MLP biases (mlp_bias)")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        missing.append(f"activation {act!r} (hidden_act)")
    kind = rope_kind(rope_scaling(raw))
    if kind not in SUPPORTED_ROPE_SCALINGS:
        missing.append(f"rope scaling {kind!r} (rope_scaling)")
    _refuse(where, family, missing)


def check_gguf_fields(fields: dict[str, Any], tensor_names: set[str], where: str) -> None:
    """Refuses a GGUF file whose architecture or features llmq does not run."""
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_FAMILIES:
        raise UnsupportedModel(f"{where}: model architecture {arch!r} is not supported; llmq "
                               f"runs {', '.join(SUPPORTED_FAMILIES)}")
    missing = [why for prefix, why in _GGUF_UNREAD_TENSORS.items()
               if any(n == prefix or n.startswith(prefix + ".") for n in tensor_names)]
    kind = fields.get(f"{arch}.rope.scaling.type")
    if kind not in (None, "none", "linear"):
        missing.append(f"rope scaling {kind!r} ({arch}.rope.scaling.type)")
    _refuse(where, arch, missing)


def _refuse(where: str, family: str, missing: list[str]) -> None:
    if missing:
        raise UnsupportedModel(f"{where}: this {family} checkpoint needs what llmq does not "
                               f"implement: {'; '.join(missing)}")
