"""Quantized linears against their float reference, pruning that really shrinks the model,
smoothing that keeps its function, and artifacts that load back to the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.compress.calibrate import collect_stats
from llmq.engine.compress.prune import (
    PruneRecipe,
    flops_per_token,
    linear_params,
    prune,
    total_params,
)
from llmq.engine.compress.reconstruct import collect_grams
from llmq.engine.compress.smooth import smooth
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.kernels.dense import Linear
from llmq.engine.kernels.fp8 import FP8Linear, fp8_tensor_cores, quantize_fp8
from llmq.engine.kernels.quantized import Int4Linear, Int8Linear, int8_linear, quantize_layers
from llmq.engine.model.artifact import load_variant
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.manifest import ArtifactError, verify
from llmq.variants.optimize import Recipe, build
from tests.conftest import Tiny
from tests.engine.tiny import HAS_COMPILER, random_weights, repeat_ffn_channels, tiny_config

PROMPTS = ["The quick brown fox", "Write a haiku about the sea.", "1, 2, 3,", "Hello there"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_int8_linear_matches_float_reference() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g) * 0.1
    x = torch.randn(37, 64, generator=g)
    x[:, 5] *= 20  # an outlier channel, as real activations have
    layer = Int8Linear.from_float(w)
    assert layer.qweight.dtype == torch.int8 and layer.scale.shape == (96,)
    assert layer.dequantized().sub(w).abs().max() <= layer.scale.max() / 2
    out = layer(x)
    assert rel_err(out, x @ w.T) < 0.03  # either kernel: tests/engine/kernels/test_int8.py
    assert torch.equal(int8_linear(x, layer.qweight, layer.scale), out)


def test_fp8_linear_computes_what_the_tensor_cores_would() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, 64, generator=g) * 0.1
    x = torch.randn(37, 64, generator=g)
    x[:, 5] *= 20
    layer = FP8Linear.from_float(w)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale.shape == (96,)
    assert not fp8_tensor_cores(x.device)  # this machine runs the emulated form
    out = layer(x)
    assert rel_err(out, x @ w.T) < 0.06  # e4m3 keeps 3 bits of mantissa
    # the cast to e4m3 and back is exact: the form _scaled_mm multiplies, per token
    xq, x_scale = quantize_fp8(x)
    assert xq.dtype == torch.float8_e4m3fn and x_scale.shape == (37, 1)
    fake = (xq.float() * x_scale) @ layer.dequantized().T
    assert rel_err(out, fake) < 1e-6
    assert rel_err(layer.dequantized(), w) < 0.05


def test_int4_linear_matches_its_dequantized_weights() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g) * 0.1
    x = torch.randn(9, 96, generator=g)
    layer = Int4Linear.from_float(w)
    assert layer.codes.max() <= 15
    assert rel_err(layer.dequantized(), w) < 0.12  # 16 levels per group of 32
    assert rel_err(layer(x), x @ layer.dequantized().T) < 0.01  # bf16 activations


def logits(model: LlamaModel, tokens: list[int]) -> torch.Tensor:
    from llmq.engine.compress.fidelity import sequence_logits

    return sequence_logits(model, tokens)


def test_smoothing_keeps_the_function(tiny: Tiny) -> None:
    base = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    seqs = [tiny.tokenizer.encode(p) for p in PROMPTS]
    stats = collect_stats(base, seqs)
    smoothed = LlamaModel.from_hf_weights(tiny.config,
                                          smooth(tiny.config, tiny.weights, stats, 0.5))
    assert not torch.allclose(smoothed.layers[0].wqkv.weight, base.layers[0].wqkv.weight)
    for tokens in seqs:
        torch.testing.assert_close(logits(smoothed, tokens), logits(base, tokens),
                                   rtol=1e-4, atol=1e-4)


def test_pruning_removes_parameters_and_flops(tiny: Tiny) -> None:
    cfg = tiny_config(tiny.tokenizer, num_layers=3)
    weights = random_weights(cfg, seed=3)
    # make layer 1 a near no-op, and channel 7 of every FFN dead: both must go first
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        weights[f"model.layers.1.{name}"] *= 1e-3
    for i in range(3):
        weights[f"model.layers.{i}.mlp.down_proj.weight"][:, 7] = 0
    base = LlamaModel.from_hf_weights(cfg, weights)
    stats = collect_stats(base, [tiny.tokenizer.encode(p) for p in PROMPTS])
    recipe = PruneRecipe(ffn=0.3, kv_groups=1, layers=1)
    pruned_cfg, pruned_w, report = prune(cfg, weights, stats, recipe)
    assert report.removed_layers == [1]
    assert (pruned_cfg.num_layers, pruned_cfg.intermediate_size) == (2, 64)
    assert (pruned_cfg.num_kv_heads, pruned_cfg.num_heads) == (1, 2)
    model = LlamaModel.from_hf_weights(pruned_cfg, pruned_w)
    counted = sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    assert counted == report.params_after == total_params(pruned_cfg)
    # the tiny model is mostly embedding: compare what pruning can shrink, the layers' matmuls
    # (3 layers -> 2, FFN 96 -> 64 channels, attention 4 + 2 + 2 heads -> 2 + 1 + 1)
    before, after = linear_params(cfg), linear_params(pruned_cfg)
    assert after == 2 * (64 * 4 * 16 + 2 * 16 * 64 + 3 * 64 * 64)
    assert after < 0.5 * before
    norms = 2 * cfg.hidden_size  # the removed layer's two RMSNorm weights
    assert report.params_before - report.params_after == before - after + norms
    head = 2 * cfg.hidden_size * cfg.vocab_size
    assert report.flops_per_token_after == flops_per_token(pruned_cfg)
    assert report.flops_per_token_after - head < 0.5 * (report.flops_per_token_before - head)
    assert model.layers[0].w_gate.weight.shape == (64, cfg.hidden_size)
    assert model.layers[0].wqkv.weight.shape == ((2 + 2 * 1) * cfg.head_dim, cfg.hidden_size)
    kept = pruned_w["model.layers.0.mlp.down_proj.weight"]
    assert not any(torch.equal(kept[:, j], weights["model.layers.0.mlp.down_proj.weight"][:, 7])
                   for j in range(kept.shape[1]))
    out = logits(model, tiny.tokenizer.encode(PROMPTS[0]))
    assert torch.isfinite(out).all()


def _kl(base: LlamaModel, student: LlamaModel, sequences: list[list[int]]) -> float:
    kls = [torch.nn.functional.kl_div(
        logits(student, s).log_softmax(-1), logits(base, s).log_softmax(-1),
        log_target=True, reduction="batchmean") for s in sequences]
    return float(torch.stack(kls).mean())


def test_reconstruction_brings_a_pruned_model_closer_to_its_base(tiny: Tiny) -> None:
    """Distillation on hidden states, layer by layer: re-fitting each pruned layer's output
    projection on calibration text lowers the KL against the base on held-out text. What it
    recovers is what kept channels share with dropped ones, so, as in trained models (random
    ones have next to none), a third of the FFN channels here nearly repeat others."""
    cfg = tiny_config(tiny.tokenizer, num_layers=2)
    weights = random_weights(cfg, seed=5)
    g = torch.Generator().manual_seed(0)
    repeat_ffn_channels(cfg, weights, g)  # g then draws the texts, as it always did
    base = LlamaModel.from_hf_weights(cfg, weights)

    def texts(n: int) -> list[list[int]]:
        return [torch.randint(0, cfg.vocab_size, (48,), generator=g).tolist()
                for _ in range(n)]

    calibration, heldout = texts(40), texts(8)
    stats = collect_stats(base, calibration)
    grams = collect_grams(base, calibration)
    assert grams.positions == 40 * 47
    recipe = PruneRecipe(ffn=0.3)
    before = LlamaModel.from_hf_weights(*prune(cfg, weights, stats, recipe)[:2])
    pruned_cfg, refitted_w, _ = prune(cfg, weights, stats, recipe, grams)
    after = LlamaModel.from_hf_weights(pruned_cfg, refitted_w)
    assert after.layers[0].w_down.weight.shape == before.layers[0].w_down.weight.shape == (
        cfg.hidden_size, 64)
    kl_before, kl_after = _kl(base, before, heldout), _kl(base, after, heldout)
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)


def test_quantize_layers_replaces_the_decoder_linears(tiny: Tiny) -> None:
    model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    quantize_layers(model, "int8", frozenset({"1.w_down"}))
    assert isinstance(model.layers[0].w_down, Int8Linear)
    assert isinstance(model.layers[1].w_down, Linear)
    assert isinstance(model.lm_head, Linear)


def generate(engine: Engine, n: int = 12) -> list[list[int]]:
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    results = engine.generate(GenerationRequest(prompt=p, params=params) for p in PROMPTS)
    # a failed step ends every request with no tokens: equal lists of nothing prove nothing
    assert all(r.ok and len(r.token_ids) == n for r in results), results
    return [r.token_ids for r in results]


@pytest.mark.parametrize("quantize", ["int8", "int4", "fp8", "bf16"])
def test_pruned_quantized_artifact_round_trips(tiny: Tiny, tmp_path: Path,
                                               quantize: str) -> None:
    # re-fitted and distilled before int8 (pruned, recovered, quantized); int4 keeps the cut
    recovered = quantize == "int8"
    recipe = Recipe(prune=PruneRecipe(ffn=0.3, kv_groups=1, reconstruct=recovered),
                    quantize=quantize, distill_steps=2 if recovered else 0)
    out = tmp_path / "variant"
    _, variant, tok, manifest = build(str(tiny.gguf), recipe, out, log=lambda _: None)
    assert manifest["recipe"]["quantize"] == quantize
    assert manifest["recipe"]["kv_cache"] == "float16"
    assert manifest["recipe"]["prune"]["reconstruct"] == recovered
    assert ("reconstruction_tokens" in manifest["metrics"]) == recovered
    assert manifest["recipe"]["distill_steps"] == (2 if recovered else 0)
    if recovered:
        assert manifest["metrics"]["distillation"]["steps"] == 2
    assert set(manifest["linears"].values()) == {quantize}
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.pt"))
    verify(out)
    config = EngineConfig(slots=4, slot_length=128)
    before = generate(Engine(variant, tok, config))
    with Engine.load(out, config) as loaded:
        assert loaded.model.config.intermediate_size == 64
        assert loaded.model.config.num_kv_heads == 1
        assert loaded.runner.cache.dtype == torch.float16
        assert generate(loaded) == before
    reloaded, _, _ = load_variant(out)
    codes = {"int8": "qweight", "int4": "codes", "fp8": "weight", "bf16": "weight"}[quantize]
    assert torch.equal(reloaded.layers[0].w_up.state_dict()[codes].view(torch.uint8),
                       variant.layers[0].w_up.state_dict()[codes].view(torch.uint8))
    manifest_file = out / "llmq-manifest.json"
    data = json.loads(manifest_file.read_text())
    data["files"]["model.safetensors"] = "0" * 64
    manifest_file.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="do not match"):
        verify(out)


@pytest.mark.skipif(not HAS_COMPILER, reason="inductor needs a C++ compiler for CPU code")
@pytest.mark.parametrize("keep_float", [(), ("w_down",)])
def test_compiled_int8_layers_match_the_eager_path(tiny: Tiny, tmp_path: Path,
                                                   keep_float: tuple[str, ...]) -> None:
    """Workers run int8 layers through inductor-fused kernels; they must compute what the
    eager ops compute (up to float summation order), float linears kept among them too
    (their oneDNN call once crashed inductor's mkldnn fusion pass)."""
    _, variant, tok, _ = build(str(tiny.gguf), Recipe(quantize="int8", keep_float=keep_float),
                               tmp_path / "v", log=lambda _: None)
    tokens = tok.encode(PROMPTS[1])
    config = EngineConfig(slots=4, slot_length=128)
    eager = logits(variant, tokens)
    eager_tokens = generate(Engine(variant, tok, config))
    assert variant.paths.halves is None  # the tests' process set-up compiles nothing
    assert variant.choose_paths().halves is not None
    compiled = logits(variant, tokens)
    compiled_tokens = generate(Engine(variant, tok, config))
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    assert compiled_tokens == eager_tokens
    # one short sequence (llmq generate) is served sooner uncompiled
    assert variant.choose_paths("off").halves is None
    # a worker serves eagerly while the halves compile, then runs them compiled
    assert variant.choose_paths("in_background").halves is None
    assert generate(Engine(variant, tok, config)) == eager_tokens
    assert variant.wait_for_paths().halves is not None
    torch.testing.assert_close(logits(variant, tokens), eager, rtol=1e-3, atol=1e-3)
    float_model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    assert float_model.choose_paths().halves is None  # nothing to fuse in a float model


def test_an_artifact_names_only_known_dtypes(tiny: Tiny, tmp_path: Path) -> None:
    out = tmp_path / "variant"
    build(str(tiny.gguf), Recipe(quantize="bf16"), out, log=lambda _: None)
    manifest_file = out / "llmq-manifest.json"
    data = json.loads(manifest_file.read_text())
    data["dtype"] = "Tensor"  # getattr(torch, ...) would have taken any name
    manifest_file.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="unknown dtype 'Tensor'"):
        load_variant(out)
