"""Priority inside one engine: how long a high-priority request waits for its first token
while low-priority bulk work fills every slot and more waits behind it, side by side in one
process: preempting (it takes a running bulk request's slot at the next step), admission
only (it takes the next free slot), one rank (it waits its turn), and idle (no bulk: the
reference). The engine alone, no workers, no HTTP.

    .venv/bin/python -m bench.priority [--slots 16] [--bulk 64] [--bulk-tokens 128]
                                       [--urgent 6] [--runs 3] [--record]

Bulk: the shared workload's chats, ``--bulk-tokens`` new tokens each (ignore_eos), all
submitted at once. Urgent: ``--urgent`` chats of 16 new tokens, one every second from one
second after the bulk. Time to first token is measured from each urgent request's
submission."""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import markdown_table, median, record, workload

MODES = ("preempting", "admission only", "one rank", "idle")


def one_run(engine: object, mode: str, args: argparse.Namespace) -> dict[str, float]:
    from llmq.contract import SamplingParams
    from llmq.engine.generation import GenerationRequest

    ranked = mode != "one rank"
    engine.scheduler.config.preempt = mode == "preempting"  # type: ignore[attr-defined]
    bulk_count = 0 if mode == "idle" else args.bulk
    prompts = workload()
    bulk_params = SamplingParams(max_tokens=args.bulk_tokens, ignore_eos=True)
    urgent_params = SamplingParams(max_tokens=16, ignore_eos=True)
    tok = engine.tokenizer  # type: ignore[attr-defined]
    start = time.perf_counter()
    bulk = [engine.submit(GenerationRequest(  # type: ignore[attr-defined]
        **tok.chat_or_text(prompts[i % len(prompts)]["messages"]), params=bulk_params,
        rank=0 if ranked else 1)) for i in range(bulk_count)]
    first_tokens: list[float] = []
    urgent = []
    for i in range(args.urgent):
        time.sleep(max(0.0, start + 1.0 + i - time.perf_counter()))
        submitted = time.perf_counter()
        seen: list[float] = []

        def on_token(_text: str, _token: int, seen: list[float] = seen) -> None:
            if not seen:
                seen.append(time.perf_counter())

        future = engine.submit(GenerationRequest(  # type: ignore[attr-defined]
            **tok.chat_or_text(prompts[(i * 7) % len(prompts)]["messages"]),
            params=urgent_params, rank=2 if ranked else 1), on_token=on_token)
        urgent.append((submitted, seen, future))
    for submitted, seen, future in urgent:
        future.result()
        first_tokens.append(seen[0] - submitted)
    for f in bulk:
        f.result()
    seconds = time.perf_counter() - start
    tokens = bulk_count * args.bulk_tokens + args.urgent * 16
    return {"ttft_p50": statistics.median(first_tokens), "ttft_max": max(first_tokens),
            "tok_s": tokens / seconds}


def engine_preemptions(engine: object) -> int:
    return int(engine.scheduler.stats()["preemptions"])  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--bulk", type=int, default=64)
    ap.add_argument("--bulk-tokens", type=int, default=128)
    ap.add_argument("--urgent", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.host.process import configure_process
    from llmq.variants.registry import builtin_model_path

    configure_process(threads=2)
    engine = Engine.load(builtin_model_path("smollm2-135m"), EngineConfig(
        slots=args.slots, slot_length=1024, threads=2))
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):  # side by side, run by run
        for name in results:
            results[name].append(one_run(engine, name, args))
            print(name, results[name][-1], flush=True)
    engine.close()
    rows = [[name, f"{median([r['ttft_p50'] for r in runs]):.2f}",
             f"{median([r['ttft_max'] for r in runs]):.2f}",
             f"{median([r['tok_s'] for r in runs]):.1f}" if name != "idle" else "-"]
            for name, runs in results.items()]
    table = markdown_table(["urgent requests", "time to first token s, p50 (median of runs)",
                            "max (median of runs)", "all tokens/s"], rows)
    notes = (f"SmolLM2-135M fp32, one engine of {args.slots} slots; {args.bulk} bulk chats "
             f"of {args.bulk_tokens} new tokens submitted at once, {args.urgent} urgent chats "
             f"of 16 tokens one a second; preempting and admission only: bulk low, urgent "
             f"high; one rank: all normal; idle: the urgent chats alone; {args.runs} runs of "
             f"each, alternating; {engine_preemptions(engine)} preemptions in all.")
    print(table)
    print(notes)
    if args.record:
        record("Priority admission in one engine (bench/priority.py)", table, notes)


if __name__ == "__main__":
    main()
