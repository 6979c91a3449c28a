"""Our decoder against transformers' Llama on the same weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.loader import load_checkpoint, unpermute_rope_rows
from tests.conftest import Tiny
from tests.engine.conftest import hf_greedy
from tests.engine.tiny import chunked_logits, llama_cpp_permute, write_hf_folder

PROMPTS = [
    "The river flows",
    "Summarize in two sentences: the mountain is tall and the valley is deep.",
    "1, 2, 3,",
    "Once upon a time in a land far away, there lived a",
]


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    w = torch.randn(48, 7)
    permuted = torch.from_numpy(llama_cpp_permute(w.numpy(), 3))
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rope_rows(permuted, 3), w)


def test_gguf_loads_the_weights_that_were_written(tiny: Tiny) -> None:
    ckpt = load_checkpoint(tiny.gguf)
    # GGUF stores the epsilon as float32
    assert ckpt.config.rms_norm_eps == pytest.approx(tiny.config.rms_norm_eps, rel=1e-6)
    assert replace(ckpt.config, rms_norm_eps=tiny.config.rms_norm_eps) == tiny.config
    for name, tensor in tiny.weights.items():
        torch.testing.assert_close(ckpt.weights[name], tensor, rtol=0, atol=0, msg=name)


def test_safetensors_folder_loads_the_same_model(tiny: Tiny, tmp_path) -> None:
    folder = write_hf_folder(tmp_path / "hf", tiny.config, tiny.weights, tiny.tokenizer)
    ckpt = load_checkpoint(folder)
    assert ckpt.config.num_layers == tiny.config.num_layers
    assert ckpt.tokenizer.encode("hello world") == tiny.tokenizer.encode("hello world")
    for name, tensor in tiny.weights.items():
        assert torch.equal(ckpt.weights[name], tensor), name


@pytest.mark.parametrize("chunk", [1000, 5])
def test_logits_match_transformers(tiny: Tiny, chunk: int) -> None:
    ckpt = load_checkpoint(tiny.gguf)
    model = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    prompt = tiny.tokenizer.encode(PROMPTS[1])
    ours = chunked_logits(model, prompt, chunk)
    with torch.no_grad():
        ref = tiny.hf(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_batched_greedy_tokens_match_transformers(tiny: Tiny) -> None:
    """Four prompts of different lengths in one continuous batch, against batch-1 HF."""
    engine = Engine.load(tiny.gguf, EngineConfig(slots=3, slot_length=128,
                                                 step_tokens=16))
    try:
        params = SamplingParams(max_tokens=12, ignore_eos=True)
        results = engine.generate(GenerationRequest(prompt=p, params=params) for p in PROMPTS)
    finally:
        engine.close()
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = tiny.tokenizer.encode(prompt)
        assert result.finish_reason == "length"
        assert result.token_ids == hf_greedy(tiny.hf, ids, 12), prompt


def test_shared_chat_prefix_is_computed_once_and_gives_the_same_tokens(tiny: Tiny) -> None:
    engine = Engine.load(tiny.gguf, EngineConfig(slots=4, slot_length=128,
                                                 step_tokens=256))
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    try:
        params = SamplingParams(max_tokens=8, ignore_eos=True)
        results = engine.generate(GenerationRequest(messages=m, params=params) for m in chats)
        kept = len(engine.scheduler.prefixes)
    finally:
        engine.close()
    assert kept == 1  # the default system prompt, shared by all four
    for chat, result in zip(chats, results, strict=True):
        ids = tiny.tokenizer.encode_chat(chat)
        assert result.token_ids == hf_greedy(tiny.hf, ids, 8)
