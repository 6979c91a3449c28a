"""Reading checkpoints: GGUF (any tensor type the ``gguf`` package dequantizes) and Hugging Face
safetensors folders. Both produce Hugging Face tensor names and layouts, so one model class
and one RoPE form serve every source. Nothing is unpickled."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import (
    ModelConfig,
    gguf_head_widths,
    llama3_scaling_of,
    longrope_short,
    windowed_pattern,
)
from .checkpoint_names import hf_tensor_shapes
from .families import UnsupportedModel, check_gguf_fields, check_hf_config
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # Hugging Face names, float32 unless stated
    tokenizer: TextTokenizer
    source: str


# bump when the conversion of a GGUF file into its unpacked copy changes
UNPACK_FORMAT = 2


def load_checkpoint(path: str | Path, cache_dir: str | Path | None = None) -> Checkpoint:
    """The checkpoint at ``path``. A GGUF file is unpacked into ``cache_dir`` the first time
    (an fp32 Hugging Face folder, keyed by the file's path, size and modification time) and
    read from there afterwards: parsing GGUF metadata and dequantizing take seconds that
    every worker start (and every restart after a crash) would otherwise pay again."""
    path = Path(path)
    if path.is_dir():
        return _load_hf_folder(path)
    if path.suffix != ".gguf":
        raise ValueError(f"{path}: expected a .gguf file or a folder with config.json")
    if not cache_dir:
        return _load_gguf(path)
    folder = _cache_folder(path, Path(cache_dir))
    if (folder / "config.json").is_file():
        try:
            ckpt = _load_hf_folder(folder)
            return Checkpoint(ckpt.config, ckpt.weights, ckpt.tokenizer, str(path))
        except Exception as exc:  # a damaged cache costs a slow start, never a failed one
            log.warning("unpacked copy of %s unreadable (%s): reading the GGUF file and "
                        "unpacking it again", path, exc)
            shutil.rmtree(folder, ignore_errors=True)
    ckpt = _load_gguf(path)
    if _write_cache(ckpt, folder):
        _remove_stale_copies(path, folder)
    return ckpt


def _cache_folder(path: Path, cache_dir: Path) -> Path:
    """Named by what the copy depends on: the file (path, size and modification time stand
    for its hash, which would cost a read of the whole file at every start), how llmq
    converts it (``UNPACK_FORMAT``) and the ``gguf`` package that dequantizes it; a copy made
    by another version is never read."""
    stat = path.stat()
    try:
        dequantizer = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        dequantizer = "unknown"
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:"
                         f"{UNPACK_FORMAT}:{dequantizer}".encode())
    return cache_dir / f"{path.stem}-{key.hexdigest()[:16]}"


SOURCE_NOTE = "llmq-source.json"  # in each copy: the file it was unpacked from


def _remove_stale_copies(path: Path, fresh: Path) -> None:
    """Deletes the other copies of the file at ``path`` (an earlier version of the file, of
    the conversion or of the gguf package): each is as big as the model in fp32 and would
    never be read again. Copies of before the note (``UNPACK_FORMAT`` 1) are found by their
    old name. A process still reading one keeps its mapped pages."""
    stat = path.stat()
    legacy = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    stale = [fresh.with_name(f"{path.stem}-{legacy.hexdigest()[:16]}")]
    for folder in fresh.parent.glob(f"{path.stem}-*"):
        try:
            noted = json.loads((folder / SOURCE_NOTE).read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if noted == str(path.resolve()):
            stale.append(folder)
    for folder in stale:
        if folder != fresh and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _write_cache(ckpt: Checkpoint, folder: Path) -> bool:
    """Written beside its place and renamed into it, so that workers starting together
    never read half a copy; best effort (a read-only or full disk only costs speed).
    Whether the copy is in place."""
    from safetensors.torch import save_file

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ckpt.weights.items()},
                  str(partial / "model.safetensors"))
        ckpt.tokenizer.save_hf_files(partial)
        (partial / "config.json").write_text(json.dumps(ckpt.config.to_hf(), indent=1))
        (partial / SOURCE_NOTE).write_text(json.dumps(
            {"source": str(Path(ckpt.source).resolve())}))
        partial.rename(folder)
    except OSError as exc:
        if not (folder / "config.json").is_file():  # another process did not win the race
            log.warning("could not keep an unpacked copy of %s in %s: %s", ckpt.source,
                        folder.parent, exc)
            return False
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def split_fused(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Phi-3's fused projections as Llama's, in place: ``qkv_proj`` rows are q, k, v in that
    order, ``gate_up_proj`` rows the gate then up (its MLP chunks them so)."""
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        qkv = tensors.pop(p + "self_attn.qkv_proj.weight", None)
        if qkv is not None:
            q, k, v = qkv.split([q_rows, kv_rows, kv_rows])
            tensors.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                            p + "self_attn.v_proj.weight": v})
        gate_up = tensors.pop(p + "mlp.gate_up_proj.weight", None)
        if gate_up is not None:
            gate, up = gate_up.chunk(2)
            tensors.update({p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up})


def check_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuses weights that do not fit the config, naming the first tensors that are missing
    or have another shape, before anything is built or registered."""
    expected = hf_tensor_shapes(config)
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UnsupportedModel(f"{where}: missing tensors {', '.join(missing[:3])}{more} "
                               f"(a {config.family} checkpoint of {config.num_layers} layers)")
    wrong = [f"{name} is {tuple(tensors[name].shape)}, the config says {shape}"
             for name, shape in expected.items() if tuple(tensors[name].shape) != shape]
    if wrong:
        raise UnsupportedModel(f"{where}: tensors contradict config.json: {'; '.join(wrong[:2])}")


# --- GGUF -------------------------------------------------------------------------------------

# llama.cpp's tensor names (gguf.constants.TENSOR_NAMES) -> Hugging Face's, per layer
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Gemma's four norms: llama.cpp's ffn_norm is its pre-MLP norm, and Hugging Face's
# post_attention_layernorm the norm of the attention's output
_GGUF_GEMMA_LAYER_NAMES = {
    **_GGUF_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Phi-3's fused projections keep their Hugging Face layout (split_fused splits both)
_GGUF_PHI3_LAYER_NAMES = {
    **_GGUF_LAYER_NAMES,
    "attn_qkv": "self_attn.qkv_proj",
    "ffn_up": "mlp.gate_up_proj",
}
# architectures whose Q/K rows llama.cpp's converter reorders (its LlamaModel); Qwen's and
# Gemma's it writes as they are
_GGUF_PERMUTED = ("llama", "mistral")
_GGUF_GEMMA = ("gemma2", "gemma3")
# windows every n-th layer is without, where the file does not say (llama.cpp's own
# defaults for these architectures)
_GGUF_WINDOW_PATTERN = {"gemma2": 2, "gemma3": 6}
_GGUF_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def _hf_name(gguf_name: str, arch: str, where: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    names = (_GGUF_GEMMA_LAYER_NAMES if arch in _GGUF_GEMMA
             else _GGUF_PHI3_LAYER_NAMES if arch == "phi3" else _GGUF_LAYER_NAMES)
    if base.startswith("blk."):
        _, idx, part = base.split(".", 2)
        if part in names:
            return f"model.layers.{idx}.{names[part]}.{suffix}"
    elif base in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[base]}.{suffix}"
    raise UnsupportedModel(f"{where}: tensor {gguf_name!r} is not one a {arch} model has")


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of Q/K rows (made for its interleaved RoPE), giving the
    half-split layout that Hugging Face's ``rotate_half`` RoPE expects."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_config(fields: dict[str, Any], arch: str, tokenizer: TextTokenizer,
                 rope_factors: dict[str, list[float]]) -> ModelConfig:
    """The model's config from the metadata llama.cpp writes for ``arch`` (what it leaves
    out, it takes from its own defaults per architecture: so does this); ``rope_factors``:
    the rope factors the file holds as tensors (Phi-3's longrope, Llama 3's rope_freqs)."""
    def get(key: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{key}", default)

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    layers = int(get("block_count"))
    # the RoPE's channels are each head's unless Phi-4-mini's turns part of it
    # (families.check_gguf_fields refused other partial ones)
    head_dim, rotary = gguf_head_widths(fields, arch)
    context = int(get("context_length", 2048))
    scaling: dict[str, Any] | None = None
    scaling_type = get("rope.scaling.type")
    if scaling_type and scaling_type != "none":
        scaling = {"rope_type": scaling_type, "factor": float(get("rope.scaling.factor", 1.0))}
        orig = get("rope.scaling.original_context_length")
        if orig:
            scaling["original_max_position_embeddings"] = int(orig)
    frequency_factors = rope_factors.pop("frequency_factors", None)
    if frequency_factors is not None:  # Llama 3.1+'s scaling, written as its divisors
        scaling = llama3_scaling_of(frequency_factors, rotary,
                                    float(get("rope.freq_base", 10000.0)))
        if scaling is None or scaling["factor"] == 1.0:  # check_gguf_fields refused others
            scaling = None
    if rope_factors:  # Phi-3's longrope, as its config.json gives it
        scaling = {"rope_type": "longrope", **rope_factors,
                   "original_max_position_embeddings": int(
                       get("rope.scaling.original_context_length") or context)}
        if get("rope.scaling.attn_factor") is not None:
            scaling["attention_factor"] = float(get("rope.scaling.attn_factor"))
        scaling, context = longrope_short({}, scaling, context)
    gemma = arch in _GGUF_GEMMA
    window = get("attention.sliding_window")
    layer_types: tuple[str, ...] = ()
    if window and arch in _GGUF_WINDOW_PATTERN:
        pattern = int(get("attention.sliding_window_pattern") or _GGUF_WINDOW_PATTERN[arch])
        layer_types = windowed_pattern(layers, pattern)
    # llama.cpp scales Gemma's queries by rsqrt(head_dim), but by rsqrt(hidden / heads) in
    # the 27B models (46 and 62 layers), as their query_pre_attn_scalar says
    query_scalar = None
    if gemma:
        query_scalar = float(hidden // heads if layers in (46, 62) else head_dim)
    return ModelConfig(
        vocab_size=len(fields["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=context,
        tie_word_embeddings="output.weight" not in fields.get("__tensor_names__", ()),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=tokenizer.eos_token_ids,
        family=arch,
        attention_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"),
        gemma_norms=gemma,
        hidden_act="gelu_pytorch_tanh" if gemma else "silu",
        query_pre_attn_scalar=query_scalar,
        attn_softcap=float(get("attn_logit_softcapping") or 0) or None,
        final_softcap=float(get("final_logit_softcapping") or 0) or None,
        sliding_window=int(window) if window else None,
        layer_types=layer_types,
        local_rope_theta=10_000.0 if arch == "gemma3" else None,
        rotary_dim=rotary if rotary != head_dim else None,
    )


def _load_gguf(path: Path) -> Checkpoint:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from .gguf_file import ROPE_FACTOR_TENSORS, read_gguf, rope_factor_tensors

    fields, tensors = read_gguf(path)
    arch = fields.get("general.architecture")
    fields["__tensor_names__"] = {t.name for t in tensors}
    rope_factors = rope_factor_tensors(tensors)
    check_gguf_fields(fields, str(path), rope_factors.get("frequency_factors"))
    tokenizer = TextTokenizer.from_gguf_fields(fields)
    config = _gguf_config(fields, arch, tokenizer, rope_factors)
    weights: dict[str, torch.Tensor] = {}
    permuted = arch in _GGUF_PERMUTED
    for t in tensors:
        if t.name in ROPE_FACTOR_TENSORS:
            continue
        name = _hf_name(t.name, arch, str(path))
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.array(t.data, dtype=np.float32)  # a writable copy of the mapped file
        else:
            try:
                arr = dequantize(t.data, t.tensor_type)
            except NotImplementedError as exc:
                raise UnsupportedModel(f"{path}: tensor {t.name} is stored as "
                                       f"{t.tensor_type.name}, which llmq cannot read "
                                       f"({exc})") from None
        shape = tuple(reversed(t.dims))
        tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = unpermute_rope_rows(tensor, config.num_heads)
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = unpermute_rope_rows(tensor, config.num_kv_heads)
        if config.gemma_norms and name.endswith("norm.weight"):
            tensor = tensor - 1  # llama.cpp writes Gemma's norms with the 1 of x·(1 + w) in
        weights[name] = tensor
    config.validate()
    split_fused(config, weights)
    check_tensors(config, weights, str(path))
    return Checkpoint(config, weights, tokenizer, str(path))


# --- Hugging Face folders -----------------------------------------------------------------------


def _load_hf_folder(path: Path) -> Checkpoint:
    from safetensors.torch import load_file

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path}: no config.json")
    raw = json.loads(cfg_file.read_text())
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
        if eos is not None:
            raw["eos_token_id"] = eos
    check_hf_config(raw, str(cfg_file))
    config = ModelConfig.from_hf(raw)
    config.validate()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update({k: v.float() for k, v in load_file(str(f)).items()})
    split_fused(config, tensors)
    check_tensors(config, tensors, str(path))
    tok_cfg_file = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text()) if tok_cfg_file.is_file() else {}
    template_file = path / "chat_template.jinja"
    if "chat_template" not in tok_cfg and template_file.is_file():
        tok_cfg["chat_template"] = template_file.read_text()
    tokenizer = TextTokenizer.from_hf_files(
        str(path / "tokenizer.json"), tok_cfg, config.eos_token_ids, config.bos_token_id
    )
    return Checkpoint(config, tensors, tokenizer, str(path))
