"""The output head of a variant: logits over the token ids it keeps (the whole vocabulary, or
the part of it that calibration text needs, llmq.engine.compress.vocab), in float or in int8.

The head is the largest single matmul of a decode step (49,152 x 576 for SmolLM2), and an
int8 head is several times faster than a float one where int8 GEMMs are fast
(bench/BENCHMARKS.md, bench/kernels.py). The error int8 adds to a logit is small
against the gaps between most tokens, but not against the gap between the two best ones. So
the ``RERANK`` best candidates of every row are computed again exactly, in float32, from the
float embedding the head is tied to (no second copy of the weight): the greedy choice is the
float head's whenever its winner is among the int8 head's top candidates.

A dropped token (pruned vocabulary) is not impossible, only never preferred: every dropped
token gets the lowest kept logit of its row minus ln(dropped + 1), so all of them together
weigh no more than the least likely kept token. Greedy decoding never picks one; sampling
reaches one about as often as that least likely kept token; a grammar that allows nothing
else can still pick one; and the KL against the base stays finite and counts the mass the
base gave them."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels.dense import Linear
from ..kernels.int8 import int8_kernel, quantize_rows
from ..kernels.native import top_k_indices
from ..kernels.quantized import Int8Linear

RERANK = 4  # candidates per row recomputed exactly behind an int8 head
HEAD_SCHEMES = ("", "int8")  # "": the model's float dtype


class OutputHead(nn.Module):
    """``proj`` over the ``kept`` token ids (all of them when ``kept`` is empty), scattered
    into full-vocabulary logits; int8 heads re-rank their best candidates exactly."""

    def __init__(self, hidden_size: int, vocab_size: int, rows: int, scheme: str = "") -> None:
        super().__init__()
        if scheme not in HEAD_SCHEMES:
            raise ValueError(f"head scheme must be one of {HEAD_SCHEMES}, not {scheme!r}")
        self.vocab_size = vocab_size
        self.scheme = scheme
        self.proj: nn.Module = (Int8Linear(hidden_size, rows) if scheme == "int8"
                                else Linear(hidden_size, rows))
        pruned = rows < vocab_size
        self.register_buffer("kept", torch.zeros(rows if pruned else 0, dtype=torch.int64))
        self.floor_offset = math.log(vocab_size - rows + 1)
        self._product: torch.Tensor | None = None  # int8 heads: int32 [rows seen, R], kept

    @classmethod
    def from_weight(cls, weight: torch.Tensor, kept: torch.Tensor | None = None,
                    scheme: str = "") -> OutputHead:
        """A head over ``weight``'s rows ``kept`` (every row when None)."""
        rows = weight if kept is None else weight[kept]
        head = cls(weight.shape[1], weight.shape[0], rows.shape[0], scheme)
        if scheme == "int8":
            head.proj = Int8Linear.from_float(rows)
        else:
            head.proj.weight = nn.Parameter(rows.clone(), requires_grad=False)
            head.proj.pack()
        if kept is not None and rows.shape[0] < weight.shape[0]:
            head.kept = kept.to(device=weight.device, dtype=torch.int64)
        return head

    @property
    def rows(self) -> int:
        return self.kept.numel() or self.vocab_size

    def forward(self, x: torch.Tensor, exact_weight: torch.Tensor,
                scratch: bool = False) -> torch.Tensor:
        """float32 logits ``[N, V]``; ``exact_weight`` is the float ``[V, D]`` weight the head
        was made from (the tied embedding), read only for an int8 head's candidates.
        ``scratch``: the caller is done with the logits before the next call, which may
        write over them (the engine's steps)."""
        if self.scheme == "int8" and self._kept_product_serves(x):
            logits = self._int8_logits(x, scratch)
        else:
            logits = self.proj(x).float()  # [N, R]
        if self.scheme == "int8":
            candidates = top_k_indices(logits, min(RERANK, self.rows))  # [N, k]
            ids = self.kept[candidates] if self.kept.numel() else candidates
            exact = torch.bmm(exact_weight[ids].float(), x.float().unsqueeze(-1))  # [N, k, 1]
            logits.scatter_(1, candidates, exact.squeeze(-1))
        if not self.kept.numel():
            return logits
        floor = logits.amin(dim=-1, keepdim=True) - self.floor_offset
        full = torch.empty(logits.shape[0], self.vocab_size, device=logits.device)
        full.copy_(floor.expand(-1, self.vocab_size))
        return full.index_copy_(1, self.kept, logits)

    def _kept_product_serves(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32
                and isinstance(self.proj, Int8Linear)
                and int8_kernel() == "onednn")

    def _int8_logits(self, x: torch.Tensor, scratch: bool) -> torch.Tensor:
        """The int8 head's float32 logits ``[N, R]``, as ``Int8Linear`` computes them through
        oneDNN, with its int32 product in a buffer the head keeps: a fresh one per step
        (67 MB for Gemma 3's 262k rows at 64 slots) cost more in page faults than the GEMM
        itself, and so did its float copy (bench/BENCHMARKS.md). With ``scratch`` the logits
        are that buffer, converted in place."""
        proj = self.proj
        assert isinstance(proj, Int8Linear)
        n = x.shape[0]
        if self._product is None or self._product.shape[0] < n:
            self._product = torch.empty(n, proj.out_features, dtype=torch.int32)
        product = self._product[:n]
        xq, x_scale = quantize_rows(x.float())
        torch._int_mm(xq, proj.qweight.t(), out=product)
        logits = product.view(torch.float32).copy_(product) if scratch else product.float()
        return logits.mul_(proj.scale).mul_(x_scale)

    def extra_repr(self) -> str:
        return f"rows={self.rows} of {self.vocab_size}, {self.scheme or 'float'}"
