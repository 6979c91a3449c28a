"""Variant artifacts: a folder that any llmq worker can serve, loaded without pickle.

    config.json             Hugging Face Llama config of the (possibly pruned) model
    tokenizer.json          the tokenizer, with tokenizer_config.json (chat template, BOS/EOS)
    model.safetensors       the model's own tensors: float weights, or int8 weights with
                            their per-channel scales, or int4 codes with group scales
    llmq-manifest.json      format version, base model and its hash, the recipe, the scheme
                            of every linear layer, and the sha256 of every file above

The manifest is what marks a folder as a variant; ``config.json`` keeps it readable by
tools that only know Hugging Face folders (for the float parts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..kernels.fp8 import FP8Linear
from ..kernels.linear import pack_linears
from ..kernels.quantized import LAYER_LINEARS, BF16Linear, Int4Linear, Int8Linear
from ..kernels.rotated import RotatedInt8Linear
from .decoder import LlamaModel
from .manifest import FORMAT, MANIFEST, VERSION, ArtifactError, read_manifest, sha256_file, verify
from .tokenizer import TextTokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


LINEAR_KINDS: dict[str, type[nn.Module]] = {
    "int8": Int8Linear, "int8-rotated": RotatedInt8Linear, "int4": Int4Linear,
    "bf16": BF16Linear, "fp8": FP8Linear}


def linear_schemes(model: LlamaModel) -> dict[str, str]:
    """``"layers.3.w_down" -> "int8"`` for every decoder linear."""
    kinds = {kind: name for name, kind in LINEAR_KINDS.items()}
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LAYER_LINEARS:
            module = getattr(layer, name)
            kind = kinds.get(type(module))
            out[f"layers.{i}.{name}"] = kind or str(module.weight.dtype).removeprefix("torch.")
    return out


def save_variant(folder: Path, model: LlamaModel, tokenizer: TextTokenizer,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes the artifact; returns the manifest as written."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    (folder / "config.json").write_text(json.dumps(config.to_hf(), indent=1))
    tokenizer.save_hf_files(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings and config.plain_head:
        tensors.pop("lm_head.weight", None)  # the same storage as embed.weight
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    files = {f: sha256_file(folder / f) for f in
             ("config.json", "tokenizer.json", "tokenizer_config.json", WEIGHTS)}
    written = {"format": FORMAT, "version": VERSION, **manifest,
               "dtype": str(model.dtype).removeprefix("torch."),
               "linears": linear_schemes(model), "files": files}
    (folder / MANIFEST).write_text(json.dumps(written, indent=1))
    return written


def load_variant(folder: Path, device: torch.device | str = "cpu",
                 check: bool = False) -> tuple[LlamaModel, TextTokenizer, dict[str, Any]]:
    """Builds the model exactly as saved. ``check`` verifies the file hashes first (a few
    hundred ms for this model: the worker does it by default, LLMQ_VERIFY_ARTIFACTS)."""
    manifest = read_manifest(folder)
    if check:
        verify(folder)
    if manifest.get("dtype", "float32") not in DTYPES:
        raise ArtifactError(f"{folder}: unknown dtype {manifest.get('dtype')!r}")
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    dtype = DTYPES[manifest.get("dtype", "float32")]
    with torch.device("meta"):
        model = LlamaModel(config)
    for path, scheme in manifest["linears"].items():
        _, idx, name = path.split(".")
        layer = model.layers[int(idx)]
        old: nn.Linear = getattr(layer, name)
        kind = LINEAR_KINDS.get(scheme)
        if kind is not None:
            with torch.device("meta"):
                setattr(layer, name, kind(old.in_features, old.out_features))
        elif scheme != "float32":
            raise ArtifactError(f"{folder}: unknown scheme {scheme!r} for {path}")
    tensors = load_file(str(folder / WEIGHTS), device=str(device))
    stored_as_is = {f"{p}.weight" for p, s in manifest["linears"].items() if s in ("bf16", "fp8")}
    tensors.update({k: v.to(dtype) for k, v in tensors.items() if v.is_floating_point()
                    and k not in stored_as_is and not k.endswith((".scale", ".scale_zero"))})
    if config.tie_word_embeddings and config.plain_head:
        tensors["lm_head.weight"] = tensors["embed.weight"]
    missing, unexpected = model.load_state_dict(tensors, assign=True, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{folder}: tensors do not fit the manifest (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    for p in model.parameters():
        p.requires_grad_(False)
    pack_linears(model)
    return model.eval(), load_tokenizer(folder), manifest
