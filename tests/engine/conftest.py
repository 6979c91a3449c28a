from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from tests.conftest import Tiny


@pytest.fixture
def tiny_engine(tiny: Tiny) -> Iterator[Engine]:
    engine = Engine.load(tiny.gguf, EngineConfig(slots=4, slot_length=256,
                                                 step_tokens=64))
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
