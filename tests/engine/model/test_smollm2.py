"""The real SmolLM2-135M-Instruct against transformers loading the same GGUF file itself
(its own dequantization, Q/K un-permutation and tokenizer conversion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.variants.registry import builtin_model_path
from tests.engine.conftest import hf_greedy

WORKLOAD = Path(__file__).resolve().parents[3] / "shared" / "bench" / "prompts.jsonl"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about autumn leaves."}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "What colour is the sky?"}],
    [{"role": "user", "content": "Summarize in two sentences: Rivers carry water from "
      "mountains to the sea. Along the way they shape valleys and feed farms and cities."}],
]


@pytest.fixture(scope="module")
def reference() -> tuple[torch.nn.Module, object]:
    transformers = pytest.importorskip("transformers")
    path = builtin_model_path("smollm2-135m")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def test_greedy_tokens_match_transformers_on_the_real_model(reference) -> None:
    hf, hf_tok = reference
    engine = Engine.load(builtin_model_path("smollm2-135m"),
                         EngineConfig(slots=4, slot_length=512))
    try:
        params = SamplingParams(max_tokens=24, ignore_eos=True)
        results = engine.generate(GenerationRequest(messages=c, params=params) for c in CHATS)
        for chat, result in zip(CHATS, results, strict=True):
            ids = engine.tokenizer.encode_chat(chat)
            ref_ids = hf_tok.apply_chat_template(chat, add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
            assert ids == list(ref_ids)
            assert result.token_ids == hf_greedy(hf, ids, 24), chat
        first = engine.generate([GenerationRequest(messages=CHATS[0])])[0]
        assert "Paris" in first.text and first.finish_reason == "stop"
    finally:
        engine.close()


def test_workload_prompts_tokenize_like_transformers(reference) -> None:
    _, hf_tok = reference
    from llmq.engine.model.tokenizer import load_tokenizer

    if not WORKLOAD.is_file():
        pytest.skip(f"the shared workload is not beside this checkout ({WORKLOAD})")
    tok = load_tokenizer(builtin_model_path("smollm2-135m"))
    for line in WORKLOAD.read_text().splitlines()[:16]:
        messages = json.loads(line)["messages"]
        ref = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
        assert tok.encode_chat(messages) == list(ref)
