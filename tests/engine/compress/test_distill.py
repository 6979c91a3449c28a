"""Distillation after pruning (llmq/engine/compress/distill.py), on the tiny model: its training
forward computes what the serving model computes, a few steps bring the pruned model closer
to its base on text it never saw, and an interrupted run resumes to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmq.engine.compress.calibrate import collect_stats
from llmq.engine.compress.distill import (
    DistillSettings,
    Weights,
    batches,
    distill,
    forward_logits,
    kl_to_teacher,
)
from llmq.engine.compress.fidelity import sequence_logits
from llmq.engine.compress.prune import PruneRecipe, prune
from llmq.engine.config import ModelConfig
from llmq.engine.model.decoder import LlamaModel
from tests.conftest import Tiny
from tests.engine.tiny import random_weights, repeat_ffn_channels, tiny_config


def texts(vocab: int, n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(20, 40, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def test_the_training_forward_is_the_serving_models(tiny: Tiny) -> None:
    model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    sequences = texts(tiny.config.vocab_size, 3, seed=1)
    for tokens, mask in batches(sequences, 3):  # right-padded to the longest
        out = forward_logits(tiny.config, tiny.weights, tokens)
        for row in range(tokens.shape[0]):
            n = int(mask[row].sum())
            want = sequence_logits(model, tokens[row, :n].tolist())
            torch.testing.assert_close(out[row, :n], want, rtol=1e-4, atol=1e-4)


def mean_kl(config_a: ModelConfig, w_a: Weights, config_b: ModelConfig, w_b: Weights,
            sequences: list[list[int]]) -> float:
    with torch.no_grad():
        return float(torch.stack([
            kl_to_teacher(forward_logits(config_b, w_b, tokens),
                          forward_logits(config_a, w_a, tokens), mask)
            for tokens, mask in batches(sequences, 4)]).mean())


def pruned_tiny(tiny: Tiny) -> tuple[ModelConfig, Weights, ModelConfig, Weights]:
    """The tiny model, with its FFNs cut by 30% (no re-fit) after a third of their channels
    were made to nearly repeat others, so that there is something to recover."""
    cfg = tiny_config(tiny.tokenizer, num_layers=2)
    weights = random_weights(cfg, seed=5)
    repeat_ffn_channels(cfg, weights, torch.Generator().manual_seed(0))
    base = LlamaModel.from_hf_weights(cfg, weights)
    stats = collect_stats(base, texts(cfg.vocab_size, 8, seed=2))
    pruned_cfg, pruned_w, _ = prune(cfg, weights, stats, PruneRecipe(ffn=0.3,
                                                                     reconstruct=False))
    return cfg, weights, pruned_cfg, pruned_w


def test_distillation_brings_a_pruned_model_closer_to_its_base(tiny: Tiny) -> None:
    cfg, weights, pruned_cfg, pruned_w = pruned_tiny(tiny)
    # a small vocabulary, so that held-out text shares its tokens with the training text
    train, heldout = texts(300, 256, seed=3), texts(300, 8, seed=4)
    settings = DistillSettings(steps=32, lr=1e-3, batch=8)
    trained, report = distill(pruned_cfg, pruned_w, cfg, weights, train, settings)
    assert report.steps == 32 and report.resumed_at == 0
    assert report.positions == sum(map(len, train))  # 32 batches of 8: one epoch
    assert not torch.equal(trained["model.layers.0.mlp.down_proj.weight"],
                           pruned_w["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(trained["model.embed_tokens.weight"], pruned_w["model.embed_tokens.weight"])
    before = mean_kl(cfg, weights, pruned_cfg, pruned_w, heldout)
    after = mean_kl(cfg, weights, pruned_cfg, trained, heldout)
    assert after < 0.93 * before, (before, after)  # measured: 1.77 -> 1.58


def test_an_interrupted_distillation_resumes_where_it_stopped(tiny: Tiny,
                                                              tmp_path: Path) -> None:
    cfg, weights, pruned_cfg, pruned_w = pruned_tiny(tiny)
    train = texts(cfg.vocab_size, 16, seed=6)
    settings = DistillSettings(steps=6, lr=3e-3, save_every=2)
    whole, _ = distill(pruned_cfg, pruned_w, cfg, weights, train, settings)

    def stop_after_three(done: int, total: int, kl: float) -> None:
        if done == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        distill(pruned_cfg, pruned_w, cfg, weights, train, settings, stop_after_three,
                checkpoint, "run-1")
    assert checkpoint.is_file()
    elsewhere = tmp_path / "copy.safetensors"
    elsewhere.write_bytes(checkpoint.read_bytes())
    _, report = distill(pruned_cfg, pruned_w, cfg, weights, train, settings, None, elsewhere,
                        "another-run")
    assert report.resumed_at == 0  # a checkpoint of another run is not taken
    resumed, report = distill(pruned_cfg, pruned_w, cfg, weights, train, settings, None,
                              checkpoint, "run-1")
    assert report.resumed_at == 2  # the last checkpoint before the interruption
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_distillation_without_pruning_is_refused() -> None:
    from llmq.variants.optimize import Recipe

    with pytest.raises(ValueError, match="prune something"):
        Recipe(distill_steps=3).validate()
