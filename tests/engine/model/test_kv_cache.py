"""The KV cache's layout: windowed layers keep a ring of their window and one prompt chunk,
other layers every position, and a kept prefix comes back as it was, ring and all."""

from __future__ import annotations

from dataclasses import replace

import torch

from llmq.engine.config import ModelConfig
from llmq.engine.model.kv_cache import KVCache, positions_kept, prompt_chunk_limit
from tests.conftest import Tiny

WINDOWED = ("sliding_attention", "full_attention", "sliding_attention")


def windowed(config: ModelConfig, window: int = 8) -> ModelConfig:
    return replace(config, num_layers=3, sliding_window=window, layer_types=WINDOWED)


def test_windowed_layers_keep_their_window_and_a_chunk(tiny: Tiny) -> None:
    config = windowed(tiny.config)
    assert prompt_chunk_limit(config, 128) == 8
    assert [positions_kept(config, i, 128, 8) for i in range(3)] == [15, 128, 15]
    cache = KVCache(config, 2, 128, torch.float32, torch.device("cpu"), 8)
    assert cache.kept_lengths == [128, 15]
    assert [cache.layer(i)[0].shape[2] for i in range(3)] == [15, 128, 15]
    # a window as long as the slot hides nothing: every position kept, no chunk limit
    assert prompt_chunk_limit(config, 8) is None
    assert [positions_kept(config, i, 8, 8) for i in range(3)] == [8, 8, 8]
    # nor does a ring as long as the slot save anything
    assert positions_kept(windowed(tiny.config, 60), 0, 100, 60) == 100


def test_a_kept_prefix_comes_back_as_it_was_written(tiny: Tiny) -> None:
    """A prefix longer than a ring: the ring's whole content is kept, and the slot it goes
    into continues with the same keys at the same entries."""
    cache = KVCache(windowed(tiny.config), 3, 128, torch.float32, torch.device("cpu"), 8)
    g = torch.Generator().manual_seed(0)
    for kv in cache.groups:
        kv[:, :, 0].copy_(torch.randn(kv[:, :, 0].shape, generator=g))
    for n in (5, 40):
        saved = cache.save_prefix(0, n)
        assert [part.shape[3] for part in saved] == [n, min(n, 15)]
        cache.restore_prefix(2, saved)
        for i in range(3):
            keys, values = cache.layer(i)
            seen = min(n, keys.shape[2])
            assert torch.equal(keys[2, :, :seen], keys[0, :, :seen])
            assert torch.equal(values[2, :, :seen], values[0, :, :seen])
    assert not cache.groups[0][:, :, 1].any()  # other slots untouched
