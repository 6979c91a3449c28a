"""What one forward pass of the decoder needs, built once per step by the runner and shared
by every layer (llmq.engine.runner.ModelRunner.build_inputs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PrefillSegment:
    """One sequence's new tokens in a packed step: rows ``[begin, end)`` of the batch, written
    at cache positions ``[start, start + end - begin)`` of ``slot``."""

    begin: int
    end: int
    slot: int
    start: int
    mask: torch.Tensor | None  # [n, start + n] bool, None when start == 0 (plain causal)


@dataclass
class StepInputs:
    """Everything one forward pass needs, built once and shared by all layers."""

    tokens: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    # per positions kept P (kv_cache.positions_kept): [T * K] long, the rows of a layer's
    # cache viewed as [S * K * P, R]
    cache_rows: dict[int, torch.Tensor]
    num_decode: int  # rows [0, num_decode) are one decode token each
    decode_slots: torch.Tensor | None  # [num_decode] long
    decode_span: int  # decode attention covers slots [0, decode_span)
    decode_contiguous: bool  # decode_slots == arange(num_decode) and decode_span == num_decode
    decode_bias: torch.Tensor | None  # [decode_span, 1, 1, decode_len]: 0 or -inf
    decode_len: int  # cache positions read by decode attention
    decode_lengths: torch.Tensor | None  # [decode_span] long: positions each slot sees
    prefill: list[PrefillSegment]
    logits_rows: torch.Tensor  # [N] long: rows whose next-token logits are wanted
    # every row's slot and the cache positions it sees (its own position + 1): what the
    # native kernel needs to attend for decode and prompt rows alike, in one call
    row_slots: torch.Tensor  # [T] long
    row_lengths: torch.Tensor  # [T] long
    # the logits are consumed before the next step, which may write over them (the engine's
    # steps; not a caller that keeps the logits of several steps)
    scratch_logits: bool = False
    # the windowed layers' decode biases, made by the first layer of each window
    window_biases: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def windowed_decode_bias(self, window: int, kept: int) -> torch.Tensor:
        """The decode bias of a layer that sees each slot's last ``window`` positions and
        keeps ``kept`` of them in a ring (position p at p mod kept, kept >= window):
        ``[decode_span, 1, 1, min(decode_len, kept)]`` over the ring's entries. Entry j of a
        slot of n positions holds the latest position p = j mod kept below n, which it sees
        when ``n - 1 - p``, that is ``(n - 1 - j) mod kept``, is under the window."""
        bias = self.window_biases.get((window, kept))
        if bias is None:
            assert self.decode_bias is not None and self.decode_lengths is not None
            n = self.decode_lengths.view(-1, 1, 1, 1)
            entry = torch.arange(min(self.decode_len, kept), device=n.device)
            seen = (entry < n) & (torch.remainder(n - 1 - entry, kept) < window)
            bias = torch.zeros(seen.shape, dtype=self.decode_bias.dtype, device=n.device)
            bias.masked_fill_(~seen, float("-inf"))
            self.window_biases[(window, kept)] = bias
        return bias
