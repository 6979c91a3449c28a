"""Request-level behaviour of the engine on the tiny model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from llmq.contract import SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import (
    STEP_FAILED,
    ErrorCause,
    GenerationRequest,
    GenerationResult,
)
from tests.conftest import Tiny
from tests.engine.conftest import hf_greedy


def _sampled(seed: int, n: int = 12) -> GenerationRequest:
    return GenerationRequest(prompt="The weather today is",
                             params=SamplingParams(max_tokens=n, temperature=1.0, top_p=0.9,
                                                   top_k=50, seed=seed, ignore_eos=True))


def test_seeded_sampling_does_not_depend_on_batch_neighbours(tiny_engine: Engine) -> None:
    alone = tiny_engine.generate([_sampled(42)])[0]
    crowd = tiny_engine.generate([_sampled(1), _sampled(42), _sampled(2), _sampled(3)])
    assert crowd[1].token_ids == alone.token_ids
    assert len({tuple(r.token_ids) for r in crowd}) > 1  # different seeds, different text


def test_top_k_one_is_greedy(tiny: Tiny, tiny_engine: Engine) -> None:
    req = GenerationRequest(prompt="A B C", params=SamplingParams(
        max_tokens=6, temperature=0.7, top_k=1, seed=3, ignore_eos=True))
    result = tiny_engine.generate([req])[0]
    assert result.token_ids == hf_greedy(tiny.hf, tiny.tokenizer.encode("A B C"), 6)


def test_prompt_too_long_fails_alone(tiny_engine: Engine) -> None:
    too_long = GenerationRequest(prompt="word " * 300, params=SamplingParams(max_tokens=4))
    fine = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=4,
                                                                   ignore_eos=True))
    bad, good = tiny_engine.generate([too_long, fine])
    assert bad.finish_reason == "error"
    assert bad.error is not None and "exceeds the context of 256 tokens" in bad.error
    assert good.finish_reason == "length" and good.completion_tokens == 4


def test_stop_string_cuts_the_text(tiny_engine: Engine) -> None:
    free = tiny_engine.generate([GenerationRequest(
        prompt="x", params=SamplingParams(max_tokens=10, ignore_eos=True))])[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = tiny_engine.generate([GenerationRequest(
        prompt="x", params=SamplingParams(max_tokens=10, ignore_eos=True, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]


def test_eos_ends_a_request_unless_ignored(tiny: Tiny, tiny_engine: Engine) -> None:
    ids = tiny.tokenizer.encode("x")
    first = hf_greedy(tiny.hf, ids, 1)[0]
    tiny_engine.eos_ids = frozenset({first})
    stopped, ignored = tiny_engine.generate([
        GenerationRequest(prompt="x", params=SamplingParams(max_tokens=5)),
        GenerationRequest(prompt="x", params=SamplingParams(max_tokens=5, ignore_eos=True)),
    ])
    assert stopped.finish_reason == "stop" and stopped.text == ""
    assert ignored.finish_reason == "length" and ignored.completion_tokens == 5


def test_requests_join_a_running_batch_and_cancel_stops_one(tiny_engine: Engine) -> None:
    long_params = SamplingParams(max_tokens=200, ignore_eos=True)
    running = tiny_engine.submit(GenerationRequest(prompt="go", params=long_params,
                                                   request_id="long"))
    seen = threading.Event()
    late = tiny_engine.submit(
        GenerationRequest(prompt="late", params=SamplingParams(max_tokens=3, ignore_eos=True)),
        on_token=lambda text, token: seen.set())
    assert late.result(timeout=60).completion_tokens == 3
    assert seen.is_set()
    assert not running.done()  # the short request finished while the long one ran
    tiny_engine.cancel("long")
    result = running.result(timeout=60)
    assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 200
    timing = result.timing
    assert timing.submitted_at <= timing.started_at <= timing.first_token_at
    assert timing.first_token_at <= timing.finished_at <= time.time()


def test_a_request_that_breaks_the_add_path_fails_alone(tiny_engine: Engine) -> None:
    """A seed past what torch takes (the contract refuses it; this one slipped past by
    model_construct) once killed the engine thread and hung every later request."""
    poison = GenerationRequest(prompt="x", params=SamplingParams.model_construct(
        **{**SamplingParams().model_dump(), "max_tokens": 3, "temperature": 0.7, "seed": 2**64}))
    fine = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=3,
                                                                   ignore_eos=True))
    bad, good = tiny_engine.generate([poison, fine])
    assert bad.finish_reason == "error" and "long" in (bad.error or "")
    assert bad.cause == ErrorCause.REQUEST and good.cause is None
    assert good.ok and good.completion_tokens == 3
    assert tiny_engine.generate([fine])[0].ok  # still serving
    assert not tiny_engine.stalled(0.0)  # idle: nothing waits


def test_a_dead_engine_thread_is_started_again(tiny_engine: Engine) -> None:
    fine = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=2))
    assert tiny_engine.generate([fine])[0].ok
    thread = tiny_engine._thread
    assert thread is not None
    tiny_engine._stop.set()  # the loop ends as if it had died
    tiny_engine._wake.set()
    thread.join(10)
    assert not thread.is_alive()
    tiny_engine._stop.clear()
    assert tiny_engine.generate([fine])[0].ok
    assert tiny_engine._thread is not thread and tiny_engine.last_step_at is not None


def test_many_threads_submitting_at_once_start_one_loop(tiny_engine: Engine) -> None:
    """Feeders submit concurrently; two loops sharing one scheduler once failed every
    request in flight (a prefix planned by one loop, copied by the other)."""
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    barrier = threading.Barrier(8)
    results = []
    # engines of earlier tests may still run their loops: count only the ones started here
    before = {t for t in threading.enumerate() if t.name == "llmq-engine"}

    def feeder(i: int) -> None:
        barrier.wait()
        results.append(tiny_engine.submit(GenerationRequest(
            messages=[{"role": "user", "content": f"Question {i}?"}], params=params)))

    threads = [threading.Thread(target=feeder, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(f.result(timeout=60).ok for f in results)
    loops = [t for t in threading.enumerate() if t.name == "llmq-engine" and t not in before]
    assert len(loops) == 1


def test_a_failed_step_fails_what_was_in_flight_and_forgets_kept_prefixes(
        tiny_engine: Engine) -> None:
    """One bad step (a transient out-of-memory, say) must not poison the steps after it: a
    prefix planned in it was never kept, so the kept prefixes are dropped with it."""
    chat = [{"role": "user", "content": "Question?"}]
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    assert tiny_engine.generate([GenerationRequest(messages=chat, params=params)])[0].ok
    real = tiny_engine.runner.execute
    calls = []

    def fail_once(plan):  # noqa: ANN001, ANN202 - fault injection around the real runner
        calls.append(plan)
        if len(calls) == 1:
            raise RuntimeError("injected: out of memory")
        return real(plan)

    tiny_engine.runner.execute = fail_once  # type: ignore[method-assign]
    caught = tiny_engine.generate([GenerationRequest(messages=chat, params=params)] * 2)
    assert [r.finish_reason for r in caught] == ["error", "error"]
    assert all((r.error or "").startswith(STEP_FAILED) for r in caught)
    assert all(r.cause == ErrorCause.STEP for r in caught)
    assert len(tiny_engine.scheduler.prefixes) == 0 and not tiny_engine.runner._prefixes
    again = tiny_engine.generate([GenerationRequest(messages=chat, params=params)] * 3)
    assert all(r.ok and r.completion_tokens == 3 for r in again)


def test_a_preempted_request_ends_as_it_would_have_without_preemption(tiny: Tiny) -> None:
    """Two bulk requests fill both slots; an urgent one arrives after the later of them has
    made k tokens and takes its slot at once. The preempted one resumes by prefilling its
    prompt and output, and its tokens, greedy or seeded, are those of the run without the
    urgent one."""
    engine = Engine.load(tiny.gguf, EngineConfig(slots=2, slot_length=256, step_tokens=64))

    def bulk() -> list[GenerationRequest]:
        return [GenerationRequest(prompt="The weather today is", rank=0, params=SamplingParams(
                    max_tokens=24, ignore_eos=True)),
                GenerationRequest(prompt="Once upon a time", rank=0, params=SamplingParams(
                    max_tokens=24, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True))]

    try:
        alone = [r.token_ids for r in engine.generate(bulk())]
        for k, victim in ((1, 0), (6, 1), (15, 0)):
            urgent: list[Future[GenerationResult]] = []
            made = [0]

            def at_k(_piece: str, _token: int, k: int = k,
                     urgent: list[Future[GenerationResult]] = urgent, made: list[int] = made
                     ) -> None:
                made[0] += 1
                if made[0] == k:  # in the engine's thread: admitted at its next step
                    # longer than what the victim had: it overwrites the victim's cache
                    urgent.append(engine.submit(GenerationRequest(
                        prompt="Quick, the answer please! " * 8, rank=2,
                        params=SamplingParams(max_tokens=3, ignore_eos=True))))
            requests = bulk()
            futures = {1 - victim: engine.submit(requests[1 - victim])}
            futures[victim] = engine.submit(requests[victim], at_k)  # the later: preempted
            results = [futures[i].result(timeout=120).token_ids for i in (0, 1)]
            assert urgent and urgent[0].result(timeout=120).completion_tokens == 3
            assert results == alone, (k, victim)
        assert engine.scheduler.stats()["preemptions"] == 3
    finally:
        engine.close()
