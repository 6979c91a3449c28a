"""Pruning the output vocabulary: the head computes logits for the tokens a model actually
emits, not all of its vocabulary (SmolLM2's 49,152-row head is the largest single matmul of
a decode step). The input embeddings stay whole, so any token can still be read.

A dropped token is not impossible, only never preferred (llmq.engine.model.head says how).

Which tokens stay is measured on calibration text: every token of the text, every token the
base model ranks in its top ``top_k`` at any position of it, the tokens any text can be
spelled with and the end-of-sequence ones (TextTokenizer.base_token_ids), and then the lowest
ids (a BPE vocabulary's most frequent merges, a SentencePiece one's best-scored pieces) up to
the size asked for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..model.decoder import LlamaModel
from .fidelity import sequence_logits
from .head import rebuild_head

ROW_MULTIPLE = 64  # kept rows stay a multiple of this (GEMM blocking)


def choose_tokens(model: LlamaModel, sequences: Sequence[list[int]], rows: int,
                  always: Iterable[int] = (), top_k: int = 8) -> torch.Tensor:
    """The ``rows`` token ids to keep (sorted), chosen on calibration ``sequences``."""

    vocab = model.config.vocab_size
    rows = min(vocab, max(ROW_MULTIPLE, -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE))
    needed = torch.zeros(vocab, dtype=torch.bool)
    needed[list(always)] = True
    with torch.inference_mode():
        for tokens in sequences:
            needed[tokens] = True
            top = sequence_logits(model, tokens).topk(top_k, dim=-1).indices
            needed[top.flatten().cpu()] = True
    kept = needed.nonzero().flatten()
    if kept.numel() > rows:  # the calibration text needs more: keep what it needs
        rows = -(-kept.numel() // ROW_MULTIPLE) * ROW_MULTIPLE
    rest = (~needed).nonzero().flatten()[: rows - kept.numel()]
    return torch.cat([kept, rest]).sort().values


def prune_vocab(model: LlamaModel, kept: torch.Tensor) -> LlamaModel:
    """``model`` with its head cut to ``kept`` token ids (in place; returned for chaining)."""
    return rebuild_head(model, kept)
