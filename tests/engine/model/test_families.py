"""Checkpoints of families, or with features, that the decoder does not implement are refused
with what is missing, at import and at load; never run as another family. The families it
runs are read with their features (the parity against transformers: test_family_parity).
Configs come from transformers itself (its own config classes, as `save_pretrained` writes
them)."""

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
           "phi3": transformers.Phi3Config, "gemma": transformers.GemmaConfig,
           "starcoder2": transformers.Starcoder2Config}[kind]
    return cls(**{**SMALL, **fields}).to_dict()


def folder_with(tmp_path: Path, config: dict[str, Any]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(("family", "why"), [("gemma", "Gemma 1")])
def test_a_folder_of_another_family_is_refused_by_name(family: str, why: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel,
                       match=f"model family '{family}'.*{why}.*llmq runs llama, mistral, qwen2"):
        load_checkpoint(folder_with(tmp_path, hf_config(family)))


@pytest.mark.parametrize(("fields", "missing"), [
    ({"attention_bias": True}, "attention biases"),
    ({"mlp_bias": True}, "MLP biases"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"partial_rotary_factor": 0.5}, "partial rotary factor of 0.5"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
])
def test_a_llama_folder_asking_for_unimplemented_maths_is_refused(
        fields: dict[str, Any], missing: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=missing):
        load_checkpoint(folder_with(tmp_path, hf_config("llama", **fields)))


@pytest.mark.parametrize(("family", "fields", "missing"), [
    ("qwen3", {"attention_bias": True}, "attention biases on every projection"),
    ("gemma3_text", {"use_bidirectional_attention": True}, "bidirectional attention"),
    ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
     "rope scaling 'linear' on windowed layers"),
    ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     r"rope scaling 'dynamic' \(rope_parameters.full_attention\)"),
])
def test_a_supported_family_asking_for_unimplemented_maths_is_refused(
        family: str, fields: dict[str, Any], missing: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=missing):
        load_checkpoint(folder_with(tmp_path, hf_config(family, **fields)))


def test_a_partial_rotary_factor_is_read_in_both_forms_and_refused_where_it_cannot_run(
        tmp_path: Path) -> None:
    """Phi-4-mini's RoPE turns 3/4 of each head. Up to transformers 4 the factor is a
    top-level field, from 5 a rope parameter: read either way, and refused where the
    channel count is odd or the family's own layers would not apply it."""
    new = hf_config("phi3", partial_rotary_factor=0.75)
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(partial_rotary_factor=0.75, rope_theta=10000.0)
    for raw in (new, old):
        assert ModelConfig.from_hf(raw).rope_dim == 12
    assert ModelConfig.from_hf(hf_config("phi3")).rotary_dim is None
    with pytest.raises(UnsupportedModel, match="11 of 16 channels is not an even"):
        load_checkpoint(folder_with(tmp_path / "odd", hf_config("phi3",
                                                                partial_rotary_factor=0.7)))
    legacy_llama = {**hf_config("llama"), "partial_rotary_factor": 0.5}
    legacy_llama.pop("rope_parameters")
    with pytest.raises(UnsupportedModel, match="partial rotary factor of 0.5 in a llama"):
        load_checkpoint(folder_with(tmp_path / "llama", legacy_llama))


def test_a_gguf_whose_rope_turns_part_of_each_head_is_refused() -> None:
    from llmq.engine.model.families import check_gguf_fields

    fields = {"general.architecture": "llama", "llama.embedding_length": 64,
              "llama.attention.head_count": 4, "llama.rope.dimension_count": 16,
              "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}
    check_gguf_fields(fields, "m.gguf")
    with pytest.raises(UnsupportedModel, match=r"RoPE on 12 of each head's 16 channels "
                                               r"\(llama.rope.dimension_count\)"):
        check_gguf_fields({**fields, "llama.rope.dimension_count": 12}, "m.gguf")


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


def windows(config: ModelConfig) -> list[int | None]:
    return [config.layer_window(i) for i in range(config.num_layers)]


def test_windows_are_read_per_layer_as_transformers_applies_them() -> None:
    mistral = ModelConfig.from_hf(hf_config("mistral", sliding_window=64))
    assert windows(mistral) == [64, 64] and mistral.max_position_embeddings == 512
    assert windows(ModelConfig.from_hf(hf_config("mistral", sliding_window=None))) == [None] * 2
    # Qwen's window is off unless use_sliding_window, and then from max_window_layers on
    assert windows(ModelConfig.from_hf(hf_config("qwen2", sliding_window=64))) == [None] * 2
    qwen = hf_config("qwen2", sliding_window=64, use_sliding_window=True, max_window_layers=1)
    assert windows(ModelConfig.from_hf(qwen)) == [None, 64]
    qwen.pop("layer_types")  # as configs written before transformers 4.53 have it
    assert windows(ModelConfig.from_hf(qwen)) == [None, 64]
    gemma2 = ModelConfig.from_hf(hf_config("gemma2", sliding_window=16))
    assert windows(gemma2) == [16, None]
    assert (gemma2.attn_softcap, gemma2.final_softcap) == (50.0, 30.0)
    gemma3 = ModelConfig.from_hf(hf_config("gemma3_text", num_hidden_layers=7))
    assert windows(gemma3) == [4096] * 5 + [None, 4096]
    assert gemma3.layer_rope(0) == (10000.0, None) and gemma3.layer_rope(5) == (1e6, None)


def test_a_config_round_trips_through_the_fields_llmq_writes() -> None:
    """Unpacked GGUF files and artifacts carry ``to_hf``'s config: read back, the same."""
    for kind, fields in [("qwen2", {}), ("qwen3", {"head_dim": 32}), ("gemma2", {}),
                         ("phi3", {"partial_rotary_factor": 0.75}),
                         ("gemma3_text", {}), ("mistral", {"sliding_window": 32}),
                         ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}})]:
        config = ModelConfig.from_hf(hf_config(kind, **fields))
        assert ModelConfig.from_hf(config.to_hf()) == config, kind


def gguf_with(path: Path, arch: str, tensors: dict[str, np.ndarray],
              tokenizer: tuple[str, str] = ("gpt2", "smollm")) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model(tokenizer[0])
    writer.add_tokenizer_pre(tokenizer[1])
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
    with pytest.raises(UnsupportedModel, match="architecture 'phi2' is not supported"):
        load_checkpoint(gguf_with(tmp_path / "q.gguf", "phi2", {"token_embd.weight": weight}))
    llama31 = gguf_with(tmp_path / "l.gguf", "llama", {"token_embd.weight": weight,
                                                        "rope_freqs.weight": weight[0]})
    with pytest.raises(UnsupportedModel, match="rope_freqs"):
        load_checkpoint(llama31)


@pytest.mark.usefixtures("sqlite_env")
def test_a_gguf_whose_tokenizer_llmq_does_not_read_is_refused_at_import(tmp_path: Path
                                                                        ) -> None:
    """Phi-4-mini's GGUF names the pre-tokenizer gpt-4o: refused before it is registered,
    not at the first load."""
    from llmq.variants.registry import import_model, list_models

    weight = np.zeros((4, 4), dtype=np.float32)
    path = gguf_with(tmp_path / "phi4.gguf", "phi3", {"token_embd.weight": weight},
                     tokenizer=("gpt2", "gpt-4o"))
    with pytest.raises(ValueError, match=r"pre-tokenizer 'gpt-4o' \(tokenizer.ggml.pre; "
                                         r"llmq reads smollm, "):
        import_model(path, "my-phi4")
    assert "my-phi4" not in {m["name"] for m in list_models()}
    rwkv = gguf_with(tmp_path / "r.gguf", "llama", {"token_embd.weight": weight},
                     tokenizer=("rwkv", ""))
    with pytest.raises(UnsupportedModel, match=r"tokenizer 'rwkv' \(tokenizer.ggml.model"):
        load_checkpoint(rwkv)


@pytest.mark.usefixtures("sqlite_env")
def test_import_refuses_and_registers_nothing(tmp_path: Path) -> None:
    from llmq.variants.registry import import_model, list_models

    folder = folder_with(tmp_path / "gemma", hf_config("gemma"))
    with pytest.raises(ValueError, match="model family 'gemma'"):
        import_model(folder, "my-gemma")
    assert "my-gemma" not in {m["name"] for m in list_models()}


@pytest.mark.usefixtures("sqlite_env")
def test_the_registry_describes_an_imported_family(tmp_path: Path) -> None:
    """`llmq model list` shows the family, parameters, context and template source."""
    from llmq.variants.registry import import_model, list_models
    from tests.engine.model.family_models import write_family_folder

    folder, hf = write_family_folder(tmp_path / "qwen3", "qwen3")
    import_model(folder, "my-qwen3")
    row = next(m for m in list_models() if m["name"] == "my-qwen3")
    assert row["recipe"]["model"] == {
        "family": "qwen3", "params": sum(p.numel() for p in hf.parameters()),  # tied once
        "context": 512, "template": "tokenizer_config.json"}
