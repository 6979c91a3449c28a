"""Output heads: a vocabulary-pruned head keeps the kept rows' logits exactly as the full
head's and never prefers a dropped token; an int8 head re-ranks its best candidates exactly;
both load back from an artifact to the same logits."""

from __future__ import annotations

from pathlib import Path

import torch

from llmq.engine.compress.fidelity import sequence_logits
from llmq.engine.compress.head import rebuild_head
from llmq.engine.compress.prune import flops_per_token
from llmq.engine.compress.vocab import ROW_MULTIPLE, choose_tokens, prune_vocab
from llmq.engine.model.artifact import load_variant, save_variant
from llmq.engine.model.decoder import LlamaModel
from tests.conftest import Tiny
from tests.engine.tiny import forced_int8_kernel


def base_model(tiny: Tiny) -> LlamaModel:
    return LlamaModel.from_hf_weights(tiny.config, tiny.weights)


def test_kept_rows_are_exact_and_dropped_ones_never_win(tiny: Tiny) -> None:
    tokens = tiny.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    full = sequence_logits(base_model(tiny), tokens)
    kept = choose_tokens(base_model(tiny), [tokens], rows=100, always=[0, 1, 2])
    assert kept.numel() % ROW_MULTIPLE == 0 and kept.numel() >= 100
    assert torch.equal(kept, kept.unique())  # sorted, no repeats
    assert set(tokens) | {0, 1, 2} <= set(kept.tolist())
    pruned = sequence_logits(prune_vocab(base_model(tiny), kept), tokens)
    assert pruned.shape == full.shape
    torch.testing.assert_close(pruned[:, kept], full[:, kept], rtol=1e-5, atol=1e-5)
    dropped = torch.ones(full.shape[1], dtype=torch.bool)
    dropped[kept] = False
    assert (pruned[:, dropped] < pruned[:, kept].amin(-1, keepdim=True)).all()
    # all dropped tokens together weigh no more than the least likely kept one
    probs = pruned.softmax(-1)
    assert (probs[:, dropped].sum(-1) <= probs[:, kept].amin(-1) * 1.0001).all()
    # the base's top choices on the calibration text are kept, so its greedy picks agree
    assert torch.equal(pruned.argmax(-1), full.argmax(-1))


def test_pruned_head_costs_less_and_round_trips(tiny: Tiny, tmp_path: Path) -> None:
    tokens = tiny.tokenizer.encode("1, 2, 3, 4, 5,")
    model = prune_vocab(base_model(tiny), choose_tokens(base_model(tiny), [tokens], rows=256))
    assert model.config.head_tokens == 256 < tiny.config.vocab_size
    assert flops_per_token(model.config) < flops_per_token(tiny.config)
    save_variant(tmp_path / "v", model, tiny.tokenizer, {"recipe": {}})
    loaded, _, _ = load_variant(tmp_path / "v", check=True)
    assert loaded.config.head_tokens == 256
    torch.testing.assert_close(sequence_logits(loaded, tokens), sequence_logits(model, tokens))


def test_an_int8_head_re_ranks_its_best_candidates_exactly(tiny: Tiny) -> None:
    tokens = tiny.tokenizer.encode("The quick brown fox jumps over the lazy dog. 1, 2, 3")
    full = sequence_logits(base_model(tiny), tokens)
    model = rebuild_head(base_model(tiny), scheme="int8")
    assert model.config.head_scheme == "int8" and model.config.head_tokens == 0
    approx = sequence_logits(model, tokens)
    assert torch.equal(approx.argmax(-1), full.argmax(-1))
    # the candidates were recomputed in float: the winners' logits are the float head's
    rows = torch.arange(len(tokens))
    winners = full.argmax(-1)
    torch.testing.assert_close(approx[rows, winners], full[rows, winners], rtol=1e-5, atol=1e-5)
    # everything else carries int8's error: close, but not the same numbers
    spread = (full.amax(-1) - full.amin(-1)).mean()
    error = (approx - full).abs()
    assert error.mean() < 0.02 * spread and error.amax() > 0


def test_a_pruned_int8_head_round_trips(tiny: Tiny, tmp_path: Path) -> None:
    tokens = tiny.tokenizer.encode("1, 2, 3, 4, 5,")
    kept = choose_tokens(base_model(tiny), [tokens], rows=256)
    model = rebuild_head(prune_vocab(base_model(tiny), kept), scheme="int8")
    assert (model.config.head_tokens, model.config.head_scheme) == (256, "int8")
    assert torch.equal(model.lm_head.kept, kept)
    save_variant(tmp_path / "v", model, tiny.tokenizer, {"recipe": {}})
    loaded, _, _ = load_variant(tmp_path / "v", check=True)
    assert (loaded.config.head_tokens, loaded.config.head_scheme) == (256, "int8")
    torch.testing.assert_close(sequence_logits(loaded, tokens), sequence_logits(model, tokens))
    assert torch.equal(sequence_logits(loaded, tokens).argmax(-1),
                       sequence_logits(base_model(tiny), tokens).argmax(-1))


def test_an_int8_head_keeps_its_product_buffer_and_gives_the_same_logits(tiny: Tiny) -> None:
    """Through oneDNN the int8 head writes its int32 product into a buffer it keeps (a fresh
    one per step cost more in page faults than the GEMM): bit for bit Int8Linear's logits,
    at growing and shrinking row counts; a caller's logits survive the next call unless it
    asked for scratch logits, which are the buffer itself."""
    head = rebuild_head(base_model(tiny), scheme="int8").lm_head
    g = torch.Generator().manual_seed(0)
    with forced_int8_kernel("onednn"):
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for n in (3, 7, 2):
            x = torch.randn(n, tiny.config.hidden_size, generator=g)
            want = head.proj(x).float()
            got = head._int8_logits(x, scratch=False)
            assert torch.equal(got, want)
            kept.append((got, want))
            scratch = head._int8_logits(x, scratch=True)
            assert torch.equal(scratch, want)
            assert scratch.data_ptr() == head._product.data_ptr()
        assert all(torch.equal(got, want) for got, want in kept)
        assert head._product.shape[0] == 7
