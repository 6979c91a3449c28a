"""Where a model's time goes on the shared workload: one warm run under torch.profiler, on a
compute thread with the engine's threads (as workers run it), printed as PyTorch's table of
operators by self time. A diagnosis, not a benchmark: the profiler itself costs a few
percent, and nothing is recorded in BENCHMARKS.md.

    .venv/bin/python -m bench.profile [--model smollm2-135m|NAME|PATH] [--slots 64] [--rows 25]
        [--shapes]

``--shapes`` splits each operator by its input shapes (which of a step's matmuls, copies and
multiplications is the head's).
"""

from __future__ import annotations

import argparse
import time

from bench.common import workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--shapes", action="store_true", help="group operators by input shapes")
    args = ap.parse_args()

    import torch

    from llmq.contract import SamplingParams
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest
    from llmq.engine.host.process import configure_process
    from llmq.engine.host.threads import on_compute_thread
    from llmq.variants.registry import resolve

    configure_process(threads=2)
    engine = Engine.load(resolve(args.model), EngineConfig(
        slots=args.slots, slot_length=512, threads=2, step_tokens=4096))
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)

    def requests() -> list[GenerationRequest]:
        # a model without a chat template (Gemma 3 270M's GGUF) gets the texts as prompts
        return [GenerationRequest(**engine.tokenizer.chat_or_text(p["messages"]), params=params)
                for p in workload()]

    def run() -> None:
        engine.generate_here(requests()[:2])  # warm-up: compilation, first allocations
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=args.shapes) as prof:
            start = time.perf_counter()
            results = engine.generate_here(requests())
            seconds = time.perf_counter() - start
        tokens = sum(r.completion_tokens for r in results)
        print(f"{args.model}: {tokens} tokens in {seconds:.1f} s, {tokens / seconds:.1f} "
              f"tokens/s under the profiler, KV cache {engine.runner.cache.dtype}")
        print(prof.key_averages(group_by_input_shape=args.shapes).table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40,
            max_shapes_column_width=70))

    on_compute_thread(run)


if __name__ == "__main__":
    main()
