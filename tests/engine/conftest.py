from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llmq.worker.engine import Engine, EngineConfig
from llmq.worker.engine.config import ModelConfig
from llmq.worker.engine.tokenizer import TextTokenizer

from .tiny import hf_model, random_weights, smollm2_tokenizer, tiny_config, write_gguf


@dataclass
class Tiny:
    tokenizer: TextTokenizer
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    gguf: Path
    hf: torch.nn.Module


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    tok = smollm2_tokenizer()
    cfg = tiny_config(tok)
    weights = random_weights(cfg)
    path = write_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", cfg, weights)
    return Tiny(tok, cfg, weights, path, hf_model(cfg, weights))


@pytest.fixture
def tiny_engine(tiny: Tiny) -> Iterator[Engine]:
    engine = Engine.load(tiny.gguf, EngineConfig(num_slots=4, slot_length=256,
                                                 max_step_tokens=64))
    yield engine
    engine.close()


def hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation by transformers, recomputing the whole sequence at each token:
    the definition of greedy decoding, free of any cache's numerics (transformers' own cached
    ``generate`` departs from it on the real model, with a logit margin of 0.1 at the flip)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]
