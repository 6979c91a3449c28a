"""The two configurations of the engine: a model's architecture (``ModelConfig``, read from its
checkpoint rather than hard-coded to one model) and an engine's run-time shape
(``EngineConfig``: slots, context, step size, device; the worker fills it from the LLMQ_
settings of the same names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KV_CACHE_DTYPES = ("", "float32", "float16", "bfloat16", "int8")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    head_tokens: int = 0  # rows of a vocabulary-pruned output head (0: the whole vocabulary)
    # "float16" etc.: the KV cache's storage ("": the model's dtype; "int8": codes with a
    # float32 scale per position and head, kv_cache.to_cache)
    kv_cache_dtype: str = ""
    head_scheme: str = ""  # "int8": an int8 output head (llmq.engine.model.head; "": float)

    @property
    def plain_head(self) -> bool:
        """The head is one float matmul over the whole vocabulary (not an OutputHead)."""
        return not self.head_tokens and not self.head_scheme

    @property
    def head_rows(self) -> int:
        return self.head_tokens or self.vocab_size

    @property
    def group_size(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def validate(self) -> None:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {', '.join(KV_CACHE_DTYPES[1:])}, "
                             f"not {self.kv_cache_dtype!r}")
        if self.kv_cache_dtype == "int8" and self.head_dim % 4:
            raise ValueError(f"an int8 KV cache needs a head dimension that is a multiple of 4 "
                             f"(its rows end in a float32 scale), not {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face ``config.json`` of a Llama-family model."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=rope_theta(cfg),
            rope_scaling=rope_scaling(cfg),
            max_position_embeddings=context_length(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            head_tokens=int(cfg.get("llmq_head_tokens") or 0),
            kv_cache_dtype=str(cfg.get("llmq_kv_cache_dtype") or ""),
            head_scheme=str(cfg.get("llmq_head_scheme") or ""),
        )

    def to_hf(self) -> dict[str, Any]:
        """The equivalent Hugging Face ``LlamaConfig`` fields (for artifacts and parity tests;
        a pruned or int8 head and the KV cache's storage are llmq's own fields, which other
        readers ignore)."""
        extra: dict[str, Any] = {"llmq_head_tokens": self.head_tokens} if self.head_tokens else {}
        if self.kv_cache_dtype:
            extra["llmq_kv_cache_dtype"] = self.kv_cache_dtype
        if self.head_scheme:
            extra["llmq_head_scheme"] = self.head_scheme
        return {**extra,
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }


def rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """The rope fields of a ``config.json``: transformers 5 writes them in one
    ``rope_parameters`` dict (theta included), earlier versions as ``rope_theta`` and
    ``rope_scaling``; both are read, the newer form first."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        return params
    return {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta", 10000.0)}


def rope_theta(cfg: dict[str, Any]) -> float:
    return float(rope_parameters(cfg).get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The scaling's fields as transformers' ``rope_scaling`` has them; None for none."""
    params = {k: v for k, v in rope_parameters(cfg).items() if k != "rope_theta"}
    kind = params.get("rope_type") or params.get("type")
    return params if kind not in (None, "default") else None


def context_length(cfg: dict[str, Any]) -> int:
    """The positions a model runs at most. A sliding window (Mistral's) caps it: within the
    window, windowed attention is full attention, so the decoder's maths stay exact and a
    longer prompt is refused rather than run without its window."""
    length = int(cfg.get("max_position_embeddings", 2048))
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", True):
        length = min(length, int(window))
    return length


@dataclass
class EngineConfig:
    """Field names match the settings that fill them (``LLMQ_SLOTS`` -> ``slots``)."""

    slots: int = 32
    slot_length: int = 2048
    step_tokens: int = 4096
    prefix_cache_entries: int = 16
    threads: int | None = None  # None: what configure_process set
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "auto"  # auto (cpu: float32, cuda: bfloat16) | float32 | bfloat16 | float16
