"""Executes a ``StepPlan`` on the model: packs the step's tokens, keeps the KV cache and the
kept prefixes, and returns the logits of the sequences that need a next token."""

from __future__ import annotations

import torch

from .model.decoder import LlamaModel
from .model.kv_cache import KVCache
from .model.step_inputs import PrefillSegment, StepInputs
from .scheduler import Sequence, StepPlan


def sampled_sequences(plan: StepPlan) -> list[Sequence]:
    """The sequences that get a token from a step, in the order of its rows of logits."""
    return [d.seq for d in plan.decode] + [p.seq for p in plan.prefill if p.completes_prompt]


class ModelRunner:
    def __init__(self, model: LlamaModel, slots: int, slot_length: int,
                 chunk: int | None = None) -> None:
        """``chunk``: the most prompt tokens of one sequence a step holds (what windowed
        layers' rings are sized for: kv_cache.positions_kept); None: ``slot_length``."""
        self.model = model
        self.device = model.device
        self.cache = KVCache(model.config, slots, slot_length, model.kv_dtype,
                             self.device, chunk)
        # kept prefixes: key -> KVCache.save_prefix's copy
        self._prefixes: dict[tuple[int, ...], list[torch.Tensor]] = {}

    def forget_prefixes(self) -> None:
        self._prefixes.clear()

    def execute(self, plan: StepPlan) -> tuple[list[Sequence], torch.Tensor]:
        """Runs ``plan``; returns the sequences that get a token and their ``[N, V]`` logits."""
        for copy in plan.prefix_copies:
            self.cache.restore_prefix(copy.slot, self._prefixes[copy.key])
        step, wanted = self.build_inputs(plan)
        step.scratch_logits = True  # the engine samples from them before its next step
        logits = self.model(step, self.cache) if step.tokens.numel() else None
        for save in plan.prefix_saves:  # planned where the slot has just reached len(key)
            self._prefixes[save.key] = self.cache.save_prefix(save.slot, len(save.key))
        for key in plan.prefix_evictions:
            self._prefixes.pop(key, None)
        if logits is None:
            logits = torch.empty(0, self.model.config.vocab_size)
        return wanted, logits

    def build_inputs(self, plan: StepPlan) -> tuple[StepInputs, list[Sequence]]:
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        rows: list[int] = []
        for d in plan.decode:
            rows.append(len(tokens))
            tokens.append(d.token)
            positions.append(d.position)
            slots.append(d.seq.slot)
        num_decode = len(tokens)
        segments = []
        for p in plan.prefill:
            begin = len(tokens)
            n = len(p.tokens)
            tokens.extend(p.tokens)
            positions.extend(range(p.start, p.start + n))
            slots.extend([p.seq.slot] * n)
            segments.append(self._segment(begin, n, p.seq.slot, p.start))
            if p.completes_prompt:
                rows.append(begin + n - 1)
        dev = self.device

        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        decode_slots = None
        decode_bias = decode_lengths = None
        span = decode_len = 0
        contiguous = True
        if num_decode:
            dslots = slots[:num_decode]
            span = max(dslots) + 1
            contiguous = span == num_decode and dslots == list(range(num_decode))
            decode_len = max(positions[:num_decode]) + 1
            # lengths per slot in the span; slots not decoding see position 0 only
            lengths = torch.ones(span, dtype=torch.long)
            lengths[torch.tensor(dslots)] = torch.tensor(positions[:num_decode]) + 1
            visible = torch.arange(decode_len) < lengths[:, None]
            decode_bias = torch.zeros(span, 1, 1, decode_len, dtype=self.model.dtype)
            decode_bias.masked_fill_(~visible.view(span, 1, 1, decode_len), float("-inf"))
            decode_bias = decode_bias.to(dev)
            decode_lengths = lengths.to(dev)
            decode_slots = as_tensor(dslots)
        step = StepInputs(
            tokens=as_tensor(tokens), positions=as_tensor(positions),
            cache_rows=self._cache_rows(slots, positions),
            num_decode=num_decode, decode_slots=decode_slots, decode_span=span,
            decode_contiguous=contiguous, decode_bias=decode_bias, decode_len=decode_len,
            decode_lengths=decode_lengths,
            prefill=segments, logits_rows=as_tensor(rows),
            row_slots=as_tensor(slots), row_lengths=as_tensor([p + 1 for p in positions]),
        )
        return step, sampled_sequences(plan)

    def _cache_rows(self, slots: list[int], positions: list[int]) -> dict[int, torch.Tensor]:
        """Per positions kept P: the row of each (token, KV head) in a layer's cache viewed
        as ``[S * K * P, R]``."""
        heads = self.model.config.num_kv_heads
        slot_t = torch.tensor(slots, dtype=torch.long)[:, None]
        pos_t = torch.tensor(positions, dtype=torch.long)[:, None]
        return {kept: ((slot_t * heads + torch.arange(heads)) * kept + pos_t % kept
                       ).reshape(-1).to(self.device)
                for kept in self.cache.kept_lengths}

    def _segment(self, begin: int, n: int, slot: int, start: int) -> PrefillSegment:
        """Plain causal attention when nothing is cached before the segment; otherwise a
        mask aligned to the bottom right (after a cached prefix or an earlier chunk)."""
        mask = None if start == 0 else self._causal(start, n)
        return PrefillSegment(begin, begin + n, slot, start, mask)

    def _causal(self, start: int, n: int) -> torch.Tensor:
        """Causal mask aligned to the bottom right: query i sees cache positions <= start + i."""
        q = torch.arange(n, device=self.device)[:, None]
        k = torch.arange(start + n, device=self.device)[None, :]
        return k <= q + start
