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
    cache_rows: torch.Tensor  # [T * K] long: rows of the cache viewed as [S * K * L, R]
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
    # the windowed layers' decode biases, made by the first layer of each window
    window_biases: dict[int, torch.Tensor] = field(default_factory=dict)

    def windowed_decode_bias(self, window: int) -> torch.Tensor:
        """``decode_bias`` that also hides every position but each slot's last ``window``."""
        bias = self.window_biases.get(window)
        if bias is None:
            assert self.decode_bias is not None and self.decode_lengths is not None
            first = (self.decode_lengths - window).view(-1, 1, 1, 1)
            early = torch.arange(self.decode_len, device=first.device) < first
            bias = self.decode_bias.masked_fill(early, float("-inf"))
            self.window_biases[window] = bias
        return bias
