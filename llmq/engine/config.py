"""The two configurations of the engine: a model's architecture (``ModelConfig``, read from its
checkpoint rather than hard-coded to one model) and an engine's run-time shape
(``EngineConfig``: slots, context, step size, device; the worker fills it from the LLMQ_
settings of the same names)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

KV_CACHE_DTYPES = ("", "float32", "float16", "bfloat16", "int8")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
# config.json's model_type of each family (Gemma 3's text-only model is "gemma3_text")
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                  "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3"}
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                    "phi3": "Phi3ForCausalLM"}


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
    # what sets a family's maths apart from Llama's (model/families.py detects the family;
    # the decoder reads only these fields, never the family's name)
    family: str = "llama"
    attention_bias: bool = False  # q, k and v projections add a bias (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3)
    # Gemma's layer: RMSNorm as x·(1 + w), a norm after attention and after the MLP as well as
    # before each, embeddings scaled by sqrt(hidden)
    gemma_norms: bool = False
    hidden_act: str = "silu"  # the MLP's gate activation: silu | gelu_pytorch_tanh
    query_pre_attn_scalar: float | None = None  # scores scaled by its rsqrt (None: head_dim's)
    attn_softcap: float | None = None  # scores -> cap·tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the logits
    sliding_window: int | None = None  # keys a windowed layer sees, its own position included
    # per layer "sliding_attention" or "full_attention"; () with a window: every layer windowed
    layer_types: tuple[str, ...] = ()
    local_rope_theta: float | None = None  # RoPE base of windowed layers, without scaling
    # RoPE turns only the first rotary_dim channels of each head, the rest pass through
    # (Phi-4-mini: three quarters); None: all of them
    rotary_dim: int | None = None

    @property
    def plain_head(self) -> bool:
        """The head is one float matmul over the whole vocabulary (not an OutputHead)."""
        return not self.head_tokens and not self.head_scheme

    @property
    def head_rows(self) -> int:
        return self.head_tokens or self.vocab_size

    @property
    def rope_dim(self) -> int:
        """The channels of each head that RoPE turns."""
        return self.rotary_dim or self.head_dim

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_window(self, index: int) -> int | None:
        """The sliding window of layer ``index``; None where it attends to every position."""
        if not self.sliding_window:
            return None
        if self.layer_types and self.layer_types[index] != "sliding_attention":
            return None
        return self.sliding_window

    def layer_rope(self, index: int) -> tuple[float, dict[str, Any] | None]:
        """RoPE base and scaling of layer ``index``."""
        if self.local_rope_theta is not None and self.layer_window(index):
            return self.local_rope_theta, None
        return self.rope_theta, self.rope_scaling

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
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types names {len(self.layer_types)} layers, the model has "
                             f"{self.num_layers}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"activation {self.hidden_act!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face ``config.json`` of a family llmq runs (families.check_hf_config
        has refused the others)."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        family = FAMILY_OF_MODEL_TYPE.get(cfg.get("model_type", "llama"), "llama")
        gemma = family in ("gemma2", "gemma3")
        theta, scaling, local_theta = rope_theta(cfg), rope_scaling(cfg), None
        if family == "gemma3":
            theta, scaling, local_theta = gemma3_rope(cfg)
        context = int(cfg.get("max_position_embeddings", 2048))
        if (scaling or {}).get("rope_type") == "longrope":
            scaling, context = longrope_short(cfg, scaling or {}, context)
        qwen = family in ("qwen2", "qwen3")
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        rotary = int(head_dim * partial_rotary_factor(cfg))
        window = (cfg.get("sliding_window", 4096 if gemma else None)
                  if cfg.get("use_sliding_window", not qwen) else None)
        layer_types = tuple(cfg.get("layer_types") or ())
        if qwen and window and not layer_types:  # transformers' rule for Qwen's windows
            first = int(cfg.get("max_window_layers", 28))
            layer_types = tuple("sliding_attention" if i >= first else "full_attention"
                                for i in range(int(cfg["num_hidden_layers"])))
        if not window:  # every layer attends to every position, whatever its type says
            layer_types = ()
        if family == "gemma2" and window and not layer_types:  # before transformers 4.53 wrote them
            layer_types = windowed_pattern(int(cfg["num_hidden_layers"]), 2)
        if family == "gemma3" and window and not layer_types:
            layer_types = windowed_pattern(int(cfg["num_hidden_layers"]),
                                           int(cfg.get("sliding_window_pattern", 6)))
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6 if gemma else 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=context,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            head_tokens=int(cfg.get("llmq_head_tokens") or 0),
            kv_cache_dtype=str(cfg.get("llmq_kv_cache_dtype") or ""),
            head_scheme=str(cfg.get("llmq_head_scheme") or ""),
            family=family,
            attention_bias=family == "qwen2",
            qk_norm=family in ("qwen3", "gemma3"),
            gemma_norms=gemma,
            hidden_act=hidden_activation(cfg),
            query_pre_attn_scalar=(float(cfg.get("query_pre_attn_scalar") or 256)
                                   if gemma else None),
            attn_softcap=_positive(cfg.get("attn_logit_softcapping",
                                           50.0 if family == "gemma2" else None)),
            final_softcap=_positive(cfg.get("final_logit_softcapping",
                                            30.0 if family == "gemma2" else None)),
            sliding_window=int(window) if window else None,
            layer_types=layer_types,
            local_rope_theta=local_theta,
            rotary_dim=rotary if rotary != head_dim else None,
        )

    def to_hf(self) -> dict[str, Any]:
        """The family's Hugging Face config fields (for unpacked GGUF files, artifacts and
        parity tests; a pruned or int8 head and the KV cache's storage are llmq's own fields,
        which other readers ignore)."""
        extra: dict[str, Any] = {"llmq_head_tokens": self.head_tokens} if self.head_tokens else {}
        if self.kv_cache_dtype:
            extra["llmq_kv_cache_dtype"] = self.kv_cache_dtype
        if self.head_scheme:
            extra["llmq_head_scheme"] = self.head_scheme
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling}
        if self.family == "gemma3":
            full = {"rope_type": "default", **(self.rope_scaling or {}),
                    "rope_theta": self.rope_theta}
            local = {"rope_type": "default", "rope_theta": self.local_rope_theta or 10000.0}
            # and the fields transformers 4 reads, which 5 takes from rope_parameters
            rope = {"rope_parameters": {"full_attention": full, "sliding_attention": local},
                    "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
                    "rope_local_base_freq": local["rope_theta"]}
        family_fields: dict[str, Any] = {}
        if self.gemma_norms:
            family_fields = {"hidden_activation": self.hidden_act,
                             # an int where it is one (transformers' config insists)
                             "query_pre_attn_scalar": _integral(self.query_pre_attn_scalar),
                             "attn_logit_softcapping": self.attn_softcap,
                             "final_logit_softcapping": self.final_softcap}
        if self.sliding_window:
            family_fields.update(sliding_window=self.sliding_window,
                                 use_sliding_window=True)
        if self.layer_types:
            family_fields["layer_types"] = list(self.layer_types)
        if self.rotary_dim:
            family_fields["partial_rotary_factor"] = self.rotary_dim / self.head_dim
        return {**extra, **rope, **family_fields,
            "architectures": [HF_ARCHITECTURES[self.family]],
            "model_type": HF_MODEL_TYPES[self.family],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
            "hidden_act": self.hidden_act,
            # transformers' attention_bias puts a bias on every projection, o_proj's too;
            # Qwen2's q/k/v biases are its family's (model_type), not this field
            "attention_bias": False,
            "mlp_bias": False,
        }


FAMILY_OF_MODEL_TYPE = {v: k for k, v in HF_MODEL_TYPES.items()}


def longrope_short(cfg: dict[str, Any], scaling: dict[str, Any], context: int
                   ) -> tuple[dict[str, Any], int]:
    """Phi-3's longrope as transformers runs it within the original context: the short
    factors, and the attention factor of the whole extension. Beyond that context
    transformers switches every sequence of a batch to the long factors once the batch's
    longest passes it, which no continuous batch reproduces per sequence: so the context
    stops there (the config's ``max_position_embeddings`` is what it would stretch to)."""
    original = int(scaling.get("original_max_position_embeddings")
                   or cfg.get("original_max_position_embeddings") or context)
    factor = float(scaling.get("factor") or context / original)
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    kept = {k: v for k, v in scaling.items() if k not in ("long_factor", "rope_theta")}
    return ({**kept, "factor": factor, "attention_factor": float(attention),
             "original_max_position_embeddings": original}, min(context, original))


# where Llama 3's scaling is sought when a GGUF file gives it only as per-frequency factors:
# the original contexts (powers of two) and the low/high frequency factors Llama 3.x uses
_LLAMA3_ORIGINAL_CONTEXTS = tuple(2 ** k for k in range(5, 19))
_LLAMA3_BANDS = ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0))


def llama3_scaling_of(factors: list[float], dim: int, theta: float) -> dict[str, Any] | None:
    """Llama 3's rope scaling whose per-frequency divisors are ``factors`` (llama.cpp's
    ``rope_freqs`` tensor, which its converter computes from the scaling and writes instead
    of it), found by recomputing them for the usual parameters; None when none gives them
    (the caller refuses the file: no factors run that no config would have given)."""
    if len(factors) != dim // 2 or not factors:
        return None
    factor = max(factors)
    wavelens = [2 * math.pi * theta ** (i / dim) for i in range(0, dim, 2)]
    for original in _LLAMA3_ORIGINAL_CONTEXTS:
        for low, high in _LLAMA3_BANDS:
            expected = []
            for wavelen in wavelens:
                if wavelen < original / high:
                    expected.append(1.0)
                elif wavelen > original / low:
                    expected.append(factor)
                else:
                    smooth = (original / wavelen - low) / (high - low)
                    expected.append(1 / ((1 - smooth) / factor + smooth))
            if all(math.isclose(e, f, rel_tol=1e-5) for e, f in zip(expected, factors,
                                                                      strict=True)):
                return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                        "high_freq_factor": high, "original_max_position_embeddings": original}
    return None


def hidden_activation(cfg: dict[str, Any]) -> str:
    """The MLP's activation: Gemma's configs name it ``hidden_activation``, the others
    ``hidden_act``."""
    if cfg.get("model_type", "").startswith("gemma"):
        return str(cfg.get("hidden_activation") or "gelu_pytorch_tanh")
    return str(cfg.get("hidden_act") or "silu")


def _integral(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _positive(value: Any) -> float | None:
    return float(value) if value else None


def gemma3_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """Gemma 3's two RoPEs: the global layers' base and scaling, the local layers' base.
    transformers 5 writes ``rope_parameters`` keyed by layer type; earlier versions
    ``rope_theta``, ``rope_scaling`` (global) and ``rope_local_base_freq``."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = params.get("sliding_attention") or {}
        theta = float(full.pop("rope_theta", 1_000_000.0))
        kind = full.get("rope_type") or full.get("type")
        return (theta, full if kind not in (None, "default") else None,
                float(local.get("rope_theta", 10_000.0)))
    scaling = cfg.get("rope_scaling")
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    return (float(cfg.get("rope_theta") or 1_000_000.0),
            scaling if kind not in (None, "default") else None,
            float(cfg.get("rope_local_base_freq") or 10_000.0))


def rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """The rope fields of a ``config.json``: transformers 5 writes them in one
    ``rope_parameters`` dict (theta included), earlier versions as ``rope_theta`` and
    ``rope_scaling``; both are read, the newer form first."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        return params
    return {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta", 10000.0)}


def gguf_head_widths(fields: dict[str, Any], arch: str) -> tuple[int, int]:
    """A GGUF model's head width and the channels of each head that RoPE turns, as llama.cpp
    reads them: ``attention.key_length``, else hidden / heads; ``rope.dimension_count``, else
    the whole head (0 where the file gives neither)."""
    heads = int(fields.get(f"{arch}.attention.head_count") or 0)
    hidden = int(fields.get(f"{arch}.embedding_length") or 0)
    head_dim = int(fields.get(f"{arch}.attention.key_length") or (hidden // heads if heads
                                                                   else 0))
    return head_dim, int(fields.get(f"{arch}.rope.dimension_count") or head_dim)


def windowed_pattern(layers: int, pattern: int) -> tuple[str, ...]:
    """Gemma's layer types: every ``pattern``-th layer global, the others windowed (as
    transformers and llama.cpp count them: the last of each group is the global one)."""
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(layers))


def partial_rotary_factor(cfg: dict[str, Any]) -> float:
    """The share of each head that RoPE turns: a top-level field up to transformers 4, in
    ``rope_parameters`` from 5."""
    factor = cfg.get("partial_rotary_factor")
    if factor is None:
        factor = rope_parameters(cfg).get("partial_rotary_factor")
    return 1.0 if factor is None else float(factor)


def rope_theta(cfg: dict[str, Any]) -> float:
    return float(rope_parameters(cfg).get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The scaling's fields as transformers' ``rope_scaling`` has them; None for none."""
    params = {k: v for k, v in rope_parameters(cfg).items() if k != "rope_theta"}
    kind = params.get("rope_type") or params.get("type")
    return params if kind not in (None, "default") else None


Fusing = Literal["now", "in_background", "off"]  # EngineConfig.fuse_layers


@dataclass
class EngineConfig:
    """Field names match the settings that fill them (``LLMQ_SLOTS`` -> ``slots``)."""

    slots: int = 32
    slot_length: int = 2048
    step_tokens: int = 4096
    # a step's tokens while an interactive request runs or waits (scheduler.urgent_step_tokens)
    interactive_step_tokens: int = 512
    prefix_cache_entries: int = 16
    threads: int | None = None  # None: what configure_process set
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "auto"  # auto (cpu: float32, cuda: bfloat16) | float32 | bfloat16 | float16
    chat_date: date | None = None  # what chat templates' strftime_now renders (None: today)
    # when the layers around int8 linears are compiled (LlamaModel.choose_paths): faster
    # steps for 2-3 s of compiling even from inductor's cache; "in_background" while the first
    # steps run eagerly, "now", or "off" (llmq generate's one sequence: bench/startup.py)
    fuse_layers: Fusing = "in_background"
