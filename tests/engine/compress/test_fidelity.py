"""The fidelity measure that every model variant will carry."""

from __future__ import annotations

import json
from importlib.resources import files

import torch

from llmq.contract import SamplingParams
from llmq.engine.compress.fidelity import compare
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.loader import load_checkpoint
from tests.conftest import Tiny


def _greedy(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    texts = [engine.tokenizer.decode(p) for p in prompts]
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    return [r.token_ids for r in engine.generate(
        GenerationRequest(prompt=t, params=params) for t in texts)]


def test_shipped_prompt_sets_are_disjoint() -> None:
    def load(name: str) -> set[str]:
        text = files("llmq.data").joinpath(name).read_text()
        return {json.dumps(json.loads(x)["messages"]) for x in text.splitlines()}

    heldout, calibration = load("heldout_prompts.jsonl"), load("calibration_prompts.jsonl")
    assert len(heldout) == 16 and len(calibration) == 16 and not heldout & calibration


def test_a_model_matches_itself_and_a_perturbed_copy_does_not(tiny: Tiny) -> None:
    ckpt = load_checkpoint(tiny.gguf)
    base = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    noisy_weights = {k: v + 0.05 * torch.randn_like(v) if "mlp" in k else v
                     for k, v in ckpt.weights.items()}
    noisy = LlamaModel.from_hf_weights(ckpt.config, noisy_weights)
    engine = Engine(base, ckpt.tokenizer, EngineConfig(slots=4, slot_length=128))
    noisy_engine = Engine(noisy, ckpt.tokenizer, EngineConfig(slots=4, slot_length=128))
    try:
        prompts = [tiny.tokenizer.encode(t) for t in ("The sea", "One two three", "Hello")]
        out = _greedy(engine, prompts, 8)
        same = compare(base, base, prompts, out, out)
        assert same.kl < 1e-6 and same.top1 == 1.0 and same.same_outputs == 3
        noisy_out = _greedy(noisy_engine, prompts, 8)
        diff = compare(base, noisy, prompts, out, noisy_out)
        assert diff.kl > 1e-3 and diff.top1 < 1.0
        assert diff.mean_shared_prefix <= 8
    finally:
        engine.close()
        noisy_engine.close()
