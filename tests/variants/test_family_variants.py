"""`llmq model optimize` on the families beyond Llama: the recipes that apply build, load
back to the same tokens and keep the base's greedy choices; the ones that do not are
refused or left out with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.compress.prune import PruneRecipe
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.model.decoder import LlamaModel
from llmq.variants.optimize import Recipe, build
from tests.engine.model.family_models import write_family_folder
from tests.engine.tiny import HAS_COMPILER, chunked_logits

PROMPTS = ["The quick brown fox", "Write a haiku about the sea.", "1, 2, 3,"]


def generate(engine: Engine) -> list[list[int]]:
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    try:
        results = engine.generate(GenerationRequest(prompt=p, params=params) for p in PROMPTS)
    finally:
        engine.close()
    return [r.token_ids for r in results]


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma2", "gemma3"])
def test_an_int8_variant_builds_loads_back_and_keeps_the_base_close(family: str,
                                                                     tmp_path: Path) -> None:
    folder, _ = write_family_folder(tmp_path / family, family)
    out = tmp_path / "variant"
    logged: list[str] = []
    base, variant, tok, manifest = build(str(folder), Recipe(quantize="int8", smooth_alpha=0.5),
                                         out, log=logged.append)
    gemma = family.startswith("gemma")
    assert manifest["recipe"]["smooth_alpha"] == (None if gemma else 0.5)
    assert any("no SmoothQuant" in line for line in logged) == gemma
    assert set(manifest["linears"].values()) == {"int8"}
    assert variant.config.family == family and variant.config.head_scheme == "int8"
    tokens = tok.encode(PROMPTS[1])
    ours, ref = chunked_logits(variant, tokens, 1000), chunked_logits(base, tokens, 1000)
    # int8 noise on random weights: 1-4% here (Qwen2's smoothing, before V's bias was
    # divided with V's rows, 29%)
    assert float((ours - ref).norm() / ref.norm()) < 0.08
    config = EngineConfig(slots=2, slot_length=128, step_tokens=16)
    with Engine.load(out, config) as loaded:
        assert loaded.model.config == variant.config
        assert generate(loaded) == generate(Engine(variant, tok, config))


def test_pruning_and_distillation_are_refused_beyond_llama(tmp_path: Path) -> None:
    folder, _ = write_family_folder(tmp_path / "qwen2", "qwen2")
    with pytest.raises(ValueError, match="pruning and distillation are implemented for the "
                                         "Llama family's layers.*not qwen2's"):
        build(str(folder), Recipe(quantize="int8", prune=PruneRecipe(ffn=0.3)),
              tmp_path / "v", log=lambda _: None)
    assert not (tmp_path / "v").exists()


@pytest.mark.skipif(not HAS_COMPILER, reason="inductor needs a C++ compiler for CPU code")
@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_compiled_int8_layers_match_the_eager_path(family: str, tmp_path: Path) -> None:
    """Workers run int8 layers through inductor-fused halves: biases, q/k norms, Gemma's
    norms and GELU must compute there what they compute eagerly."""
    folder, _ = write_family_folder(tmp_path / family, family)
    _, variant, tok, _ = build(str(folder), Recipe(quantize="int8"), tmp_path / "v",
                               log=lambda _: None)
    tokens = tok.encode(PROMPTS[1])
    eager = chunked_logits(variant, tokens, 5)
    assert variant.choose_paths().halves is not None
    compiled = chunked_logits(variant, tokens, 5)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    assert isinstance(variant, LlamaModel)
