"""The scheduler alone: plain dataclasses, no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmq.engine import scheduler as sched
from llmq.engine.scheduler import Scheduler, SchedulerConfig, Sequence


def make(n_slots: int = 2, budget: int = 100, prefix: int = 0, length: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(slots=n_slots, slot_length=length,
                                     step_tokens=budget, prefix_cache_entries=prefix,
                                     min_prefix_tokens=4))


def run_step(s: Scheduler, token: int = 7) -> sched.StepPlan:
    """Plans a step and feeds back one token for every sequence that gets one."""
    plan = s.schedule()
    sampled = {id(d.seq): token for d in plan.decode}
    sampled.update({id(p.seq): token for p in plan.prefill if p.completes_prompt})
    s.update(plan, sampled)
    return plan


def test_scheduler_module_imports_no_torch() -> None:
    tree = ast.parse(Path(sched.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom)}
    assert "torch" not in names


def test_slots_fill_then_free_slot_is_refilled_next_step() -> None:
    s = make(n_slots=2)
    seqs = [Sequence(f"r{i}", [1, 2, 3], max_tokens=5) for i in range(3)]
    for q in seqs:
        s.add(q)
    plan = run_step(s)
    assert [p.seq for p in plan.prefill] == seqs[:2]  # two slots, third waits
    assert {q.slot for q in seqs[:2]} == {0, 1} and seqs[2].slot == -1
    plan = run_step(s)
    assert [d.seq for d in plan.decode] == seqs[:2] and not plan.prefill
    assert plan.decode[0].position == 3  # the first generated token sits after the prompt
    s.finish(seqs[0])
    plan = run_step(s)
    assert [d.seq for d in plan.decode] == [seqs[1]]
    assert [p.seq for p in plan.prefill] == [seqs[2]]
    assert seqs[2].slot == 0  # the freed slot, at once


def test_long_prompt_is_chunked_within_the_step_budget() -> None:
    s = make(n_slots=2, budget=4)
    long_seq = Sequence("long", list(range(10)), max_tokens=2)
    s.add(long_seq)
    chunks = []
    while long_seq.prefilling:
        plan = run_step(s)
        assert plan.num_tokens <= 4
        chunks.append((plan.prefill[0].start, len(plan.prefill[0].tokens),
                       plan.prefill[0].completes_prompt))
    assert chunks == [(0, 4, False), (4, 4, False), (8, 2, True)]
    assert long_seq.output == [7]


def test_decodes_come_before_new_prefill_in_the_budget() -> None:
    s = make(n_slots=3, budget=5)
    first = Sequence("a", [1, 2], max_tokens=5)
    s.add(first)
    run_step(s)
    s.add(Sequence("b", list(range(20)), max_tokens=5))
    plan = s.schedule()
    assert len(plan.decode) == 1 and len(plan.prefill[0].tokens) == 4


def test_request_that_cannot_fit_is_refused() -> None:
    s = make(length=16)
    assert s.check_fits(10, 6) is None
    reason = s.check_fits(10, 7)
    assert reason is not None and "exceeds the context of 16" in reason
    with pytest.raises(ValueError):
        s.add(Sequence("x", list(range(10)), max_tokens=7))


def test_shared_prefix_is_computed_once_then_copied() -> None:
    s = make(n_slots=4, prefix=4)
    system = [9, 9, 9, 9, 9, 9]
    seqs = [Sequence(f"r{i}", [*system, 10 + i, 20 + i], max_tokens=3) for i in range(3)]
    for q in seqs:
        s.add(q)
    plan = run_step(s)
    # the first sequence computes exactly the shared prefix and keeps it; peers wait a step
    assert [(p.seq, p.start, len(p.tokens)) for p in plan.prefill] == [(seqs[0], 0, 6)]
    assert [k.key for k in plan.prefix_saves] == [tuple(system)]
    plan = run_step(s)
    assert {c.slot for c in plan.prefix_copies} == {seqs[1].slot, seqs[2].slot}
    assert sorted((p.start, len(p.tokens)) for p in plan.prefill) == [(6, 2)] * 3
    assert not plan.prefix_saves
    # what a batch's usage reports as cached input tokens
    assert [q.cached for q in seqs] == [0, 6, 6]


def test_a_chunk_cap_limits_each_sequence_and_the_prefixes_it_keeps() -> None:
    """With rings of windowed layers a sequence writes at most ``chunk_tokens`` prompt
    positions a step, whatever the budget; a shared prefix is kept only when this step's
    chunk reaches it (the runner copies the slot right after the step)."""
    s = Scheduler(SchedulerConfig(slots=4, slot_length=64, step_tokens=100, chunk_tokens=4,
                                  prefix_cache_entries=4, min_prefix_tokens=4))
    near, far = [9] * 4, [8] * 6
    seqs = [Sequence("n0", [*near, 1, 2], 2), Sequence("n1", [*near, 3, 4], 2),
            Sequence("f0", [*far, 1], 2), Sequence("f1", [*far, 2], 2)]
    for q in seqs:
        s.add(q)
    plan = run_step(s)
    assert [(p.seq.request_id, p.start, len(p.tokens)) for p in plan.prefill] == [("n0", 0, 4)]
    assert [k.key for k in plan.prefix_saves] == [tuple(near)]
    plan = run_step(s)
    assert sorted((p.seq.request_id, p.start, len(p.tokens)) for p in plan.prefill) == [
        ("f0", 0, 4), ("f1", 0, 4), ("n0", 4, 2), ("n1", 4, 2)]
    assert not plan.prefix_saves  # the far prefix (6 tokens) is past one chunk


def test_prefix_cache_evicts_least_recently_used() -> None:
    index = sched.PrefixIndex(capacity=2)
    assert index.add((1, 2)) == [] and index.add((3, 4)) == []
    assert index.longest_match([1, 2, 5]) == (1, 2)  # touches (1, 2)
    assert index.add((5, 6)) == [(3, 4)]
    assert index.longest_match([1, 2]) is None  # must leave a token to compute


def test_a_higher_priority_takes_the_next_free_slot_before_waiting_bulk() -> None:
    s = make(n_slots=2)
    bulk = [Sequence(f"low{i}", [1, 2, 3], max_tokens=2, rank=0) for i in range(4)]
    for q in bulk:
        s.add(q)
    run_step(s)  # the first two take the slots, two wait
    urgent = Sequence("high", [4, 5], max_tokens=2, rank=2)
    normal = Sequence("normal", [6, 7], max_tokens=2, rank=1)
    late = Sequence("high2", [8, 9], max_tokens=2, rank=2)
    for q in (normal, urgent, late):
        s.add(q)
    # by rank, then arrival; nothing running loses its slot
    assert [q.request_id for q in s.waiting] == ["high", "high2", "normal", "low2", "low3"]
    assert all(q.status is sched.SeqStatus.RUNNING for q in bulk[:2])
    for q in bulk[:2]:  # the engine ends the two running ones, freeing both slots
        s.finish(q)
    plan = run_step(s)
    assert {p.seq.request_id for p in plan.prefill} == {"high", "high2"}


def test_a_higher_rank_preempts_the_latest_lowest_and_it_resumes_where_it_stopped() -> None:
    s = make(n_slots=2)
    low = [Sequence(f"low{i}", [1, 2, 3], max_tokens=8, rank=0) for i in range(2)]
    for q in low:
        s.add(q)
    run_step(s, token=10)  # both prefilled, one token each
    run_step(s, token=11)  # and a second
    urgent = Sequence("high", [4, 5], max_tokens=2, rank=2)
    s.add(urgent)
    plan = run_step(s, token=20)
    # admitted within one step, in the slot of the latest arrived of the lowest rank
    assert [p.seq for p in plan.prefill] == [urgent] and urgent.slot == 1
    assert low[1].status is sched.SeqStatus.WAITING and low[1].preemptions == 1
    assert [d.seq for d in plan.decode] == [low[0]]
    assert low[1].output == [10, 11] and s.stats()["preemptions"] == 1
    s.finish(urgent)
    plan = run_step(s, token=12)
    # its prompt and output so far prefilled, no token drawn from it: the last one is fed next
    (resume,) = plan.prefill
    assert (resume.seq, resume.start, resume.tokens) == (low[1], 0, [1, 2, 3, 10])
    assert not resume.completes_prompt and low[1].output == [10, 11]
    plan = run_step(s, token=12)
    (decode,) = [d for d in plan.decode if d.seq is low[1]]
    assert (decode.token, decode.position) == (11, 4)  # where it stopped
    assert low[1].output == [10, 11, 12]


def test_preemption_has_caps_and_equal_ranks_never_preempt() -> None:
    s = Scheduler(SchedulerConfig(slots=1, slot_length=64, step_tokens=100,
                                  prefix_cache_entries=0, preemptions_per_sequence=1))
    low = Sequence("low", [1, 2], max_tokens=20, rank=0)
    s.add(low)
    run_step(s)
    first = Sequence("high1", [3], max_tokens=1, rank=1)
    s.add(first)
    run_step(s)
    assert first.status is sched.SeqStatus.RUNNING and low.preemptions == 1
    twin = Sequence("high2", [4], max_tokens=1, rank=1)
    s.add(twin)
    run_step(s)
    assert twin.status is sched.SeqStatus.WAITING  # its equal keeps the slot
    s.finish(first)
    run_step(s)  # low is at the head of its rank, but high2 outranks it
    assert twin.status is sched.SeqStatus.RUNNING and low.status is sched.SeqStatus.WAITING
    s.finish(twin)
    run_step(s)
    assert low.status is sched.SeqStatus.RUNNING
    third = Sequence("high3", [5], max_tokens=1, rank=1)
    s.add(third)
    run_step(s)  # low has been preempted as often as it may be: it keeps its slot
    assert low.status is sched.SeqStatus.RUNNING and third.status is sched.SeqStatus.WAITING


def test_a_waiting_low_rank_ages_until_it_runs() -> None:
    s = Scheduler(SchedulerConfig(slots=1, slot_length=64, step_tokens=100,
                                  prefix_cache_entries=0, age_steps=128, preempt=False))
    low = Sequence("low", [1, 2], max_tokens=2, rank=0)
    s.add(Sequence("first", [1], max_tokens=50, rank=1))
    s.add(low)
    steps = 0
    while low.status is sched.SeqStatus.WAITING:
        # a high-rank newcomer every step, each finishing at once: without aging, low would
        # wait behind them for ever
        for q in list(s.running):
            if len(q.output) >= 1:
                s.finish(q)
        s.add(Sequence(f"h{steps}", [3], max_tokens=1, rank=1))
        run_step(s)
        steps += 1
        assert steps < 1000
    assert (low.rank, low.boost) == (0, 1) and 128 <= steps


def test_aging_orders_the_line_but_never_preempts_its_own_class() -> None:
    """A bulk sequence that has waited long goes first in the line, yet does not take a
    running bulk sequence's slot, nor count as urgent."""
    s = Scheduler(SchedulerConfig(slots=1, slot_length=256, step_tokens=100,
                                  prefix_cache_entries=0, age_steps=64, urgent_rank=1,
                                  urgent_step_tokens=4))
    running = Sequence("running", [1, 2], max_tokens=250, rank=0)
    s.add(running)
    waiting = Sequence("waiting", [3, 4], max_tokens=2, rank=0)
    s.add(waiting)
    for _ in range(200):
        plan = run_step(s)
        assert plan.num_tokens <= 100 and running.status is sched.SeqStatus.RUNNING
    assert waiting.boost >= 2 and waiting.status is sched.SeqStatus.WAITING
    assert s.preemptions == 0 and not s._urgent()


def test_steps_stay_short_while_an_urgent_sequence_runs_or_waits() -> None:
    s = Scheduler(SchedulerConfig(slots=3, slot_length=256, step_tokens=100,
                                  prefix_cache_entries=0, urgent_rank=3, urgent_step_tokens=8))
    s.add(Sequence("bulk", list(range(150)), max_tokens=4, rank=0))
    assert run_step(s).num_tokens == 100  # bulk alone: the whole budget
    urgent = Sequence("urgent", [1, 2, 3], max_tokens=4, rank=3)
    s.add(urgent)
    plan = run_step(s)
    assert plan.num_tokens <= 8 and urgent in [p.seq for p in plan.prefill]
    assert run_step(s).num_tokens <= 8  # still running: still short
    s.finish(urgent)
    assert run_step(s).num_tokens > 8  # back to the whole budget
