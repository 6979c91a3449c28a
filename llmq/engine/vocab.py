"""Pruning the output vocabulary: the head computes logits for the tokens a model actually
emits, not all of its vocabulary (SmolLM2's 49,152-row head is the largest single matmul of
a decode step). The input embeddings stay whole, so any token can still be read.

A dropped token is not impossible, only never preferred: its logit is the lowest kept logit
of its row. Greedy decoding never picks it; sampling reaches it only from the very tail; a
grammar that allows nothing else can still pick it; and the KL against the base stays finite
and honest (it counts the mass the base gave to dropped tokens).

Which tokens stay is measured on calibration text: every token of the text, every token the
base model ranks in its top ``top_k`` at any position of it, every single-byte token (so that
any text can still be spelled), the special tokens, and then the lowest ids (a BPE
vocabulary's most frequent merges) up to the size asked for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from .kernels import Linear

if TYPE_CHECKING:
    from .model import LlamaModel

ROW_MULTIPLE = 64  # kept rows stay a multiple of this (GEMM blocking)


class PrunedHead(nn.Module):
    """The output head over ``kept`` token ids, scattered into full-vocabulary logits."""

    def __init__(self, hidden_size: int, vocab_size: int, kept_rows: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = Linear(hidden_size, kept_rows)
        self.register_buffer("kept", torch.zeros(kept_rows, dtype=torch.int64))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, kept: torch.Tensor) -> PrunedHead:
        head = cls(weight.shape[1], weight.shape[0], kept.numel())
        head.proj.weight = nn.Parameter(weight[kept].clone(), requires_grad=False)
        head.kept = kept.to(device=weight.device, dtype=torch.int64)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = self.proj(x)  # [N, V']
        full = small.amin(dim=-1, keepdim=True).expand(-1, self.vocab_size).contiguous()
        full[:, self.kept] = small  # [N, V]
        return full

    def extra_repr(self) -> str:
        return f"kept={self.kept.numel()} of {self.vocab_size}"


def choose_tokens(model: LlamaModel, sequences: Sequence[list[int]], rows: int,
                  always: Iterable[int] = (), top_k: int = 8) -> torch.Tensor:
    """The ``rows`` token ids to keep (sorted), chosen on calibration ``sequences``."""
    from .fidelity import sequence_logits

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
    weight = model.lm_head.weight.detach()
    model.lm_head = PrunedHead.from_weight(weight, kept)
    model.lm_head.proj.pack()
    model.config = replace(model.config, head_tokens=kept.numel())
    return model
