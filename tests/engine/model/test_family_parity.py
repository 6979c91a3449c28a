"""Every family llmq runs against transformers on the same tiny random weights: logits of a
prompt prefilled whole and in chunks, and greedy tokens through the engine's continuous
batching and through ``llmq run``, at several slot counts."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.config import FAMILY_OF_MODEL_TYPE, EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.loader import load_checkpoint
from tests.engine.conftest import hf_greedy
from tests.engine.model.family_models import (
    FAMILIES,
    GGUF_FAMILIES,
    write_family_folder,
    write_family_gguf,
)
from tests.engine.tiny import HAS_COMPILER, chunked_logits, native_kernels

# longer than the test models' windows (8 positions), so windowed layers drop keys in prompts
# and in decoding alike
PROMPTS = [
    "The river flows",
    "Summarize in two sentences: the mountain is tall and the valley is deep.",
    "1, 2, 3,",
    "Once upon a time in a land far away, there lived a",
]
GREEDY_TOKENS = 32


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, Path, torch.nn.Module]:
    folder, hf = write_family_folder(tmp_path_factory.mktemp(request.param) / "model",
                                     request.param)
    return request.param, folder, hf


@pytest.mark.parametrize("chunk", [1000, 5])
def test_logits_match_transformers(family: tuple[str, Path, torch.nn.Module],
                                   chunk: int) -> None:
    name, folder, hf = family
    ckpt = load_checkpoint(folder)
    assert ckpt.config.family == FAMILY_OF_MODEL_TYPE[hf.config.model_type]
    model = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    prompt = ckpt.tokenizer.encode(PROMPTS[1])
    ours = chunked_logits(model, prompt, chunk)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("slots", [1, 3])
def test_batched_greedy_tokens_match_transformers(family: tuple[str, Path, torch.nn.Module],
                                                  slots: int) -> None:
    """Four prompts through one engine: chunked prompts (16-token steps) beside decoding
    rows, every sequence past its window, at one and three slots."""
    _, folder, hf = family
    engine = Engine.load(folder, EngineConfig(slots=slots, slot_length=128, step_tokens=16))
    try:
        params = SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True)
        results = engine.generate(GenerationRequest(prompt=p, params=params) for p in PROMPTS)
        tokenizer = engine.tokenizer
    finally:
        engine.close()
    for prompt, result in zip(PROMPTS, results, strict=True):
        expected = hf_greedy(hf, tokenizer.encode(prompt), GREEDY_TOKENS)
        assert result.token_ids == expected, prompt


@pytest.mark.skipif(not HAS_COMPILER, reason="llmq's native kernels need a C++ compiler")
@pytest.mark.parametrize("family", ["gemma3", "qwen3", "phi3"], indirect=True)
def test_native_attention_serves_every_layer_with_the_same_tokens(
        family: tuple[str, Path, torch.nn.Module]) -> None:
    """With the native kernels on, every layer without a soft cap attends natively, windowed
    layers from their rings (the families whose attention differs: windows beside global
    layers, a head dim of 32, a window over every layer)."""
    _, folder, hf = family
    with native_kernels():
        engine = Engine.load(folder, EngineConfig(slots=2, slot_length=128, step_tokens=16))
        try:
            assert engine.model.choose_paths().native_attention
            params = SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True)
            results = engine.generate(GenerationRequest(prompt=p, params=params)
                                      for p in PROMPTS[:2])
            tokenizer = engine.tokenizer
        finally:
            engine.close()
    for prompt, result in zip(PROMPTS, results, strict=False):
        assert result.token_ids == hf_greedy(hf, tokenizer.encode(prompt), GREEDY_TOKENS)


@pytest.mark.parametrize("native", [False, True] if HAS_COMPILER else [False])
def test_windowed_layers_run_from_rings_and_reuse_shared_prefixes(native: bool,
                                                                   tmp_path: Path) -> None:
    """Gemma 3 with a window of 20 in a slot of 256: its windowed layers keep rings of 39
    positions, prompts go in chunks of 20, and a shared prefix is computed once and copied;
    every sequence runs past its ring, and greedy tokens stay transformers'."""
    folder, hf = write_family_folder(tmp_path / "model", "gemma3", sliding_window=20)
    shared = "Background: the mountain is tall, the valley is deep, the river flows far"
    prompts = [f"{shared} north.", f"{shared} south, slowly.", f"{shared} to the sea"]
    with native_kernels() if native else nullcontext():
        engine = Engine.load(folder, EngineConfig(slots=2, slot_length=256, step_tokens=64))
        try:
            assert engine.runner.cache.kept_lengths == [256, 39]
            assert engine.model.choose_paths().native_attention == native
            params = SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True)
            results = engine.generate(GenerationRequest(prompt=p, params=params)
                                      for p in prompts)
            hits = engine.scheduler.prefix_hit_tokens
            tokenizer = engine.tokenizer
        finally:
            engine.close()
    assert hits >= 16
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, tokenizer.encode(prompt), GREEDY_TOKENS)


def test_llmq_run_writes_transformers_greedy_text(tmp_path: Path) -> None:
    """The command line on a Gemma 3 folder (windows, two RoPEs, q/k norms), at two slot
    counts: the same text as transformers' greedy decoding."""
    from tests.engine.tiny import smollm2_tokenizer
    from tests.service.workers import llmq

    folder, hf = write_family_folder(tmp_path / "gemma3", "gemma3")
    tokenizer = smollm2_tokenizer()
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"p{i}", "prompt": p}) + "\n"
                            for i, p in enumerate(PROMPTS)))
    expected = [tokenizer.decode(hf_greedy(hf, tokenizer.encode(p), GREEDY_TOKENS))
                for p in PROMPTS]
    for slots in ("1", "4"):
        env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / f'{slots}.db'}",
               "LLMQ_BROKER_URL": "redis://127.0.0.1:1/0", "LLMQ_MODEL": str(folder),
               "LLMQ_THREADS": "1"}
        out = tmp_path / f"out-{slots}.jsonl"
        llmq(env, "run", str(path), "--output", str(out), "--max-tokens", str(GREEDY_TOKENS),
             "--temperature", "0", "--ignore-eos", "--slots", slots)
        texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        assert texts == expected, slots


@pytest.mark.parametrize("name", GGUF_FAMILIES)
def test_a_gguf_written_as_llama_cpp_does_gives_transformers_logits(name: str,
                                                                   tmp_path: Path) -> None:
    """The same weights through llama.cpp's conversion (its names and metadata, Gemma's
    norms with their 1 added, Q/K rows not reordered): the same config and logits, and the
    unpacked copy a worker keeps reads back to the same."""
    # GGUF has no query_pre_attn_scalar: llama.cpp takes Gemma's head dimension
    overrides = {"query_pre_attn_scalar": 16} if name == "gemma2" else {}
    folder, hf = write_family_folder(tmp_path / name, name, **overrides)
    path = write_family_gguf(tmp_path / f"{name}.gguf", name, hf)
    from_folder = load_checkpoint(folder)
    for _ in range(2):  # unpacked the first time, read from the unpacked copy the second
        ckpt = load_checkpoint(path, tmp_path / "cache")
        scaling = ckpt.config.rope_scaling
        if name.startswith(("phi", "llama")):  # the same scaling from other fields
            expected = from_folder.config.rope_scaling
            assert scaling is not None and expected is not None
            for field in ("rope_type", "short_factor", "factor", "low_freq_factor",
                          "high_freq_factor", "original_max_position_embeddings"):
                assert scaling.get(field) == pytest.approx(expected.get(field)), field
            scaling = expected
        assert replace(ckpt.config, rope_scaling=scaling,
                       rms_norm_eps=from_folder.config.rms_norm_eps,
                       max_position_embeddings=from_folder.config.max_position_embeddings,
                       bos_token_id=from_folder.config.bos_token_id,
                       eos_token_ids=from_folder.config.eos_token_ids) == from_folder.config
        model = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
        prompt = ckpt.tokenizer.encode(PROMPTS[1])
        with torch.no_grad():
            ref = hf(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(chunked_logits(model, prompt, 5), ref, rtol=1e-4, atol=1e-4)
    # the unpacked copy is a folder llmq reads as it is (not one it refuses and unpacks again)
    (unpacked,) = (tmp_path / "cache").iterdir()
    assert load_checkpoint(unpacked).config == ckpt.config
