"""Checkpoints of families, or with features, that the decoder does not implement are refused
with what is missing, at import and at load; never run as Llama. Configs come from
transformers itself (its own config classes, as `save_pretrained` writes them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmq.engine.config import ModelConfig
from llmq.engine.model.families import UnsupportedModel
from llmq.engine.model.loader import load_checkpoint

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def hf_config(kind: str, **fields: Any) -> dict[str, Any]:
    import transformers

    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
           "gemma2": transformers.Gemma2Config, "gemma3_text": transformers.Gemma3TextConfig,
           "phi3": transformers.Phi3Config}[kind]
    return cls(**{**SMALL, **fields}).to_dict()


def folder_with(tmp_path: Path, config: dict[str, Any]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"])
def test_a_folder_of_another_family_is_refused_by_name(family: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=f"model family '{family}'.*llmq runs llama"):
        load_checkpoint(folder_with(tmp_path, hf_config(family)))


@pytest.mark.parametrize(("fields", "missing"), [
    ({"attention_bias": True}, "attention biases"),
    ({"mlp_bias": True}, "MLP biases"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 128}}, "rope scaling 'yarn'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
])
def test_a_llama_folder_asking_for_unimplemented_maths_is_refused(
        fields: dict[str, Any], missing: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=missing):
        load_checkpoint(folder_with(tmp_path, hf_config("llama", **fields)))


def test_rope_fields_are_read_in_both_forms_transformers_writes() -> None:
    """transformers 5 writes rope_parameters (theta inside); older versions rope_theta and
    rope_scaling. Read as one or the other, a Llama 3 config gives the same maths."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 128}
    new = hf_config("llama", rope_theta=500000.0, rope_scaling=scaling)
    assert "rope_parameters" in new
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(rope_theta=500000.0, rope_scaling=scaling)
    for raw in (new, old):
        config = ModelConfig.from_hf(raw)
        assert config.rope_theta == 500000.0
        assert config.rope_scaling is not None and config.rope_scaling["factor"] == 8.0
    assert ModelConfig.from_hf(hf_config("llama")).rope_scaling is None


def test_a_sliding_window_caps_the_context_so_the_maths_stay_exact() -> None:
    assert ModelConfig.from_hf(hf_config("mistral", sliding_window=64)
                               ).max_position_embeddings == 64
    assert ModelConfig.from_hf(hf_config("mistral", sliding_window=None)
                               ).max_position_embeddings == 512


def gguf_with(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_another_architecture_or_with_rope_factors_is_refused(tmp_path: Path
                                                                         ) -> None:
    weight = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(UnsupportedModel, match="architecture 'qwen2' is not supported"):
        load_checkpoint(gguf_with(tmp_path / "q.gguf", "qwen2", {"token_embd.weight": weight}))
    llama31 = gguf_with(tmp_path / "l.gguf", "llama", {"token_embd.weight": weight,
                                                        "rope_freqs.weight": weight[0]})
    with pytest.raises(UnsupportedModel, match="rope_freqs"):
        load_checkpoint(llama31)


@pytest.mark.usefixtures("sqlite_env")
def test_import_refuses_and_registers_nothing(tmp_path: Path) -> None:
    from llmq.variants.registry import import_model, list_models

    folder = folder_with(tmp_path / "qwen", hf_config("qwen2"))
    with pytest.raises(ValueError, match="model family 'qwen2'"):
        import_model(folder, "my-qwen")
    assert "my-qwen" not in {m["name"] for m in list_models()}
