"""Continuous batching, decided without torch: plain dataclasses in, a ``StepPlan`` out.

Every step decodes one token for each running sequence, continues long prompts chunk by chunk,
and admits waiting sequences into free slots while the step's token budget lasts. A finished
sequence frees its slot at once, so a waiting one joins at the next step. Shared prompt
prefixes (a chat model's default system prompt) are prefilled once, kept, and copied into each
slot that needs them.

Ranks (priorities): a waiting sequence goes ahead of every waiting one of a lower rank, and
when no slot is free it takes the slot of the running sequence of the lowest rank (the latest
arrived among them) at once. The preempted sequence keeps its tokens and waits at the head of
its rank; when it runs again it prefills its prompt and output so far (through the prefix
cache where it can) and goes on decoding where it stopped. Caps on preemptions per step and per
sequence keep a burst from thrashing, and a sequence that has waited ``age_steps`` steps moves
up the line as if it were a rank higher, so none waits for ever (aging orders the line only:
it never lets a sequence preempt, or shorten steps, beyond its own rank)."""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_order = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request as the scheduler sees it: token ids and how far the cache has got."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    output: list[int] = field(default_factory=list)
    slot: int = -1
    computed: int = 0  # tokens whose keys/values are in the slot's cache
    cached: int = 0  # prompt tokens copied from the prefix cache, not computed (usage)
    rank: int = 1  # higher: admitted before, and preempts, every sequence of a lower rank
    preemptions: int = 0  # times it gave its slot to a higher rank
    waiting_since: int = 0  # the scheduler's step when it last began to wait (aging)
    boost: int = 0  # ranks gained by waiting: its place in the line is rank + boost
    status: SeqStatus = SeqStatus.WAITING
    order: int = field(default_factory=lambda: next(_order))
    payload: Any = None  # the engine's own per-request state

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def place(self) -> int:
        """Its rank in the waiting line (aging raises it; preemption looks at ``rank``)."""
        return self.rank + self.boost

    @property
    def prefill_end(self) -> int:
        """Where its prefill ends: the prompt's end, or, when it resumes after a preemption,
        just before its newest token (which the next decode feeds)."""
        return self.num_tokens - 1 if self.output else len(self.prompt)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_end

    def known(self, start: int, end: int) -> list[int]:
        """Its tokens, prompt then output, from ``start`` to ``end``."""
        n = len(self.prompt)
        if end <= n:
            return self.prompt[start:end]
        return (self.prompt[start:] if start < n else []) + self.output[max(0, start - n):end - n]


@dataclass
class PrefillWork:
    seq: Sequence
    start: int  # first cache position written
    tokens: list[int]
    completes_prompt: bool  # the last prompt token is in this chunk: sample from its logits


@dataclass
class DecodeWork:
    seq: Sequence
    token: int
    position: int


@dataclass
class PrefixCopy:
    slot: int
    key: tuple[int, ...]


@dataclass
class PrefixSave:
    slot: int
    key: tuple[int, ...]


@dataclass
class StepPlan:
    decode: list[DecodeWork] = field(default_factory=list)
    prefill: list[PrefillWork] = field(default_factory=list)
    prefix_copies: list[PrefixCopy] = field(default_factory=list)  # before the forward pass
    prefix_saves: list[PrefixSave] = field(default_factory=list)  # after it
    prefix_evictions: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(len(p.tokens) for p in self.prefill)


@dataclass
class SchedulerConfig:
    slots: int = 32
    slot_length: int = 2048  # cache positions per slot: prompt + generated tokens must fit
    step_tokens: int = 4096  # tokens per forward pass (decodes + prefill chunks)
    # prompt tokens of one sequence per step (None: as many as the step holds); what the
    # rings of windowed layers are sized for (llmq.engine.model.kv_cache.positions_kept)
    chunk_tokens: int | None = None
    prefix_cache_entries: int = 16  # 0 disables prefix caching
    min_prefix_tokens: int = 16  # shorter shared prefixes are not worth a cache entry
    prefix_peers: int = 8  # waiting sequences compared when looking for a shared prefix
    preempt: bool = True  # a higher rank takes a running lower rank's slot when none is free
    preemptions_per_step: int = 4
    preemptions_per_sequence: int = 3
    age_steps: int = 2048  # steps waited before a waiting sequence rises a rank (0: never)
    # while a sequence of ``urgent_rank`` or above runs or waits, a step holds at most
    # ``urgent_step_tokens`` tokens: its tokens come after short steps, not after a long
    # prefill of bulk prompts (None: no such rank)
    urgent_rank: int | None = None
    urgent_step_tokens: int = 512


class PrefixIndex:
    """Which token prefixes have their keys/values kept by the runner (LRU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], None] = OrderedDict()

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def longest_match(self, tokens: list[int]) -> tuple[int, ...] | None:
        """The longest kept prefix of ``tokens`` that leaves at least one token to compute."""
        best: tuple[int, ...] | None = None
        for key in self._entries:
            n = len(key)
            if n < len(tokens) and (best is None or n > len(best)) and tuple(tokens[:n]) == key:
                best = key
        if best is not None:
            self._entries.move_to_end(best)
        return best

    def add(self, key: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Records ``key``; returns the keys evicted to make room."""
        self._entries[key] = None
        self._entries.move_to_end(key)
        evicted = []
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            evicted.append(old)
        return evicted


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._free_slots = list(range(config.slots))
        self.prefixes = PrefixIndex(config.prefix_cache_entries)
        # prompt tokens admitted, and how many of them came from kept prefixes (as vLLM's
        # prefix_cache_queries / prefix_cache_hits count them), for the workers' metrics
        self.prompt_tokens_admitted = 0
        self.prefix_hit_tokens = 0
        self.preemptions = 0
        self.steps = 0

    def stats(self) -> dict[str, int]:
        """Occupancy and prefix-cache counters (plain ints: read from any thread)."""
        return {"slots": self.config.slots, "running": len(self.running),
                "waiting": len(self.waiting), "prompt_tokens": self.prompt_tokens_admitted,
                "prefix_hit_tokens": self.prefix_hit_tokens, "preemptions": self.preemptions}

    def forget_prefixes(self) -> None:
        """Drops every kept prefix (the runner drops its copies at the same time)."""
        self.prefixes = PrefixIndex(self.config.prefix_cache_entries)

    # --- requests in and out --------------------------------------------------------------

    def check_fits(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why a request can never run here, or None if it can."""
        if prompt_len == 0:
            return "empty prompt"
        need = prompt_len + max_tokens
        if need > self.config.slot_length:
            return (
                f"prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context of {self.config.slot_length} tokens"
            )
        return None

    def add(self, seq: Sequence) -> None:
        reason = self.check_fits(len(seq.prompt), seq.max_tokens)
        if reason:
            raise ValueError(reason)
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence, first_of_rank: bool = False) -> None:
        """Into the waiting line behind every sequence of a higher rank (and of its own,
        unless ``first_of_rank``: a preempted one goes back to the head of its rank)."""
        seq.status, seq.waiting_since = SeqStatus.WAITING, self.steps
        for i, other in enumerate(self.waiting):
            if other.place < seq.place or (first_of_rank and other.place == seq.place):
                self.waiting.insert(i, seq)
                return
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Ends ``seq`` wherever it is; a running one frees its slot for the next step."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            self._free_slots.append(seq.slot)
            self._free_slots.sort()
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- planning -------------------------------------------------------------------------

    def _chunk_budget(self, budget: int) -> int:
        chunk = self.config.chunk_tokens
        return budget if chunk is None else min(budget, chunk)

    def schedule(self) -> StepPlan:
        self.steps += 1
        if self.config.age_steps and self.waiting and self.steps % 64 == 0:
            self._age()
        if self.config.preempt and self.waiting and not self._free_slots:
            self._preempt()
        plan = StepPlan()
        budget = self.config.step_tokens
        if self._urgent():
            budget = min(budget, self.config.urgent_step_tokens)
        for seq in self.running:
            if not seq.prefilling:
                pos = seq.num_tokens - 1
                plan.decode.append(DecodeWork(seq, seq.output[-1], pos))
                budget -= 1
        # running prompts go on before admissions, except those outranked by the head of
        # the line: theirs come after it
        head = self.waiting[0].place if self.waiting else None
        prefilling = [s for s in self.running if s.prefilling]
        later = [s for s in prefilling if head is not None and s.place < head]
        for seq in prefilling:
            if budget > 0 and seq not in later:
                budget -= self._plan_chunk(plan, seq, budget, seq.prefill_end)
        while self.waiting and self._free_slots and budget > 0:
            seq = self.waiting[0]
            stop_at = self._admit(plan, seq, budget)
            budget -= self._plan_chunk(plan, seq, budget, stop_at)
            if stop_at < len(seq.prompt):
                break  # peers of a new shared prefix wait one step, then copy it
        for seq in later:
            if budget > 0:
                budget -= self._plan_chunk(plan, seq, budget, seq.prefill_end)
        return plan

    def _urgent(self) -> bool:
        rank = self.config.urgent_rank
        if rank is None:
            return False
        return any(s.rank >= rank for s in self.running) or any(
            s.rank >= rank for s in self.waiting)

    def _preempt(self) -> None:
        """Gives the slots of running sequences of lower ranks to the waiting ones of higher
        ranks, as many as wait (within the caps); the lowest rank gives first, and within it
        the latest arrived."""
        taken = 0
        for seq in list(self.waiting):
            if taken >= self.config.preemptions_per_step:
                return
            victims = [r for r in self.running if r.rank < seq.rank
                       and r.preemptions < self.config.preemptions_per_sequence]
            if not victims:
                continue
            victim = min(victims, key=lambda r: (r.rank, -r.order))
            self.running.remove(victim)
            self._free_slots.append(victim.slot)
            self._free_slots.sort()
            victim.slot, victim.computed = -1, 0
            victim.preemptions += 1
            self.preemptions += 1
            self._enqueue(victim, first_of_rank=True)
            taken += 1

    def _age(self) -> None:
        """Sequences that have waited ``age_steps`` steps move up the line by a rank."""
        aged = [s for s in self.waiting if self.steps - s.waiting_since >= self.config.age_steps]
        for seq in aged:
            self.waiting.remove(seq)
            seq.boost += 1
            self._enqueue(seq)

    def _admit(self, plan: StepPlan, seq: Sequence, budget: int) -> int:
        """Gives ``seq`` a slot and any cached prefix; returns where its first chunk must
        stop (short of the prompt's end when it is to compute a new shared prefix)."""
        self.waiting.popleft()
        seq.slot = self._free_slots.pop(0)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        if not seq.preemptions:
            self.prompt_tokens_admitted += len(seq.prompt)
        if not self.config.prefix_cache_entries:
            return seq.prefill_end
        hit = self.prefixes.longest_match(seq.prompt)
        if hit is not None:
            plan.prefix_copies.append(PrefixCopy(seq.slot, hit))
            seq.computed = len(hit)
            if not seq.preemptions:
                seq.cached = len(hit)
                self.prefix_hit_tokens += len(hit)
        shared = self._shared_prefix_length(seq)
        # kept only if this step's chunk reaches it: the runner copies the slot after the step
        reach = seq.computed + self._chunk_budget(budget)
        if seq.computed + self.config.min_prefix_tokens <= shared <= reach:
            key = tuple(seq.prompt[:shared])
            plan.prefix_saves.append(PrefixSave(seq.slot, key))
            plan.prefix_evictions.extend(self.prefixes.add(key))
            return shared
        return seq.prefill_end

    def _shared_prefix_length(self, seq: Sequence) -> int:
        best = 0
        for peer in itertools.islice(self.waiting, self.config.prefix_peers):
            best = max(best, common_prefix_length(seq.prompt, peer.prompt))
        return min(best, len(seq.prompt) - 1)

    def _plan_chunk(self, plan: StepPlan, seq: Sequence, budget: int, stop_at: int) -> int:
        """Plans the next prompt chunk of ``seq`` within ``budget``; returns its length."""
        n = min(self._chunk_budget(budget), stop_at - seq.computed)
        if n <= 0:
            return 0
        end = seq.computed + n
        plan.prefill.append(PrefillWork(seq, seq.computed, seq.known(seq.computed, end),
                                        end == len(seq.prompt) and not seq.output))
        return n

    def update(self, plan: StepPlan, sampled: dict[int, int]) -> None:
        """Advances the sequences of ``plan``; ``sampled`` maps ``id(seq)`` to the token drawn
        from its logits (decodes and completed prompts)."""
        for d in plan.decode:
            d.seq.computed += 1
        for p in plan.prefill:
            p.seq.computed = p.start + len(p.tokens)
        for seq_id_tokens in plan.decode + plan.prefill:
            seq = seq_id_tokens.seq
            token = sampled.get(id(seq))
            if token is not None:
                seq.output.append(token)
