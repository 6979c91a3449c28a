"""Structured output against free generation, side by side in one process with one engine:
the extraction and classification prompts of examples/structured.jsonl (each with its own
JSON schema, regex or choice), repeated to keep 64 slots busy, run constrained and then the
same requests with their formats removed, each made to generate exactly as many tokens as
its constrained twin did (ignore_eos, max_tokens = that count), so that both runs do the
same model work and the ratio is the cost of the constraints alone. Generated tokens/s of
each, their ratio, and the time llguidance spent computing masks per step (on a helper
thread that overlaps the forward pass).

    .venv/bin/python -m bench.structured [--runs 3] [--slots 64] [--copies 4]
"""

from __future__ import annotations

import argparse
import time

from bench.common import ROOT, markdown_table, median, record

EXAMPLES = ROOT / "examples" / "structured.jsonl"


def one_run(engine, requests) -> tuple[dict, list[int]]:
    masks = engine.mask_worker()
    seconds_before, steps_before = masks.seconds, masks.steps
    engine_steps = engine.steps
    start = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)
    mask_steps = masks.steps - steps_before
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds,
            "steps": engine.steps - engine_steps,
            "mask_ms": 1000 * (masks.seconds - seconds_before) / max(mask_steps, 1),
            "ok": sum(r.ok for r in results), "n": len(results)}, [
                r.completion_tokens for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--copies", type=int, default=4, help="times each prompt is sent")
    opts = ap.parse_args()
    from llmq.api.inputs import read_input
    from llmq.contract import SamplingParams, TextFormat
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest
    from llmq.engine.host.process import configure_process
    from llmq.variants.registry import builtin_model_path

    configure_process()
    engine = Engine.load(builtin_model_path("smollm2-135m"),
                         EngineConfig(slots=opts.slots, slot_length=1024))
    accepted = read_input(EXAMPLES).accepted * opts.copies
    params = [SamplingParams.from_stored(a.params) for a in accepted]

    def constrained() -> list:
        return [GenerationRequest(messages=a.input["messages"], params=p)
                for a, p in zip(accepted, params, strict=True)]

    def free(lengths: list[int]) -> list:
        return [GenerationRequest(messages=a.input["messages"], params=p.model_copy(update={
            "response_format": TextFormat(), "max_tokens": n, "ignore_eos": True}))
            for a, p, n in zip(accepted, params, lengths, strict=True)]

    engine.generate(constrained()[: opts.slots])  # warm-up: threads, the grammar tokenizer
    runs: dict[str, list[dict]] = {"free": [], "constrained": []}
    for _ in range(opts.runs):  # alternate, so that drift hits both alike
        figures, lengths = one_run(engine, constrained())
        runs["constrained"].append(figures)
        runs["free"].append(one_run(engine, free(lengths))[0])
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    engine.close()
    free_tps = median([r["tok_s"] for r in runs["free"]])
    cons_tps = median([r["tok_s"] for r in runs["constrained"]])
    rows = [[name, len(accepted), median([r["tokens"] for r in rs]),
             f"{median([r['tok_s'] for r in rs]):.1f}", median([r["steps"] for r in rs]),
             f"{median([r['mask_ms'] for r in rs]):.2f}" if name == "constrained" else "-"]
            for name, rs in runs.items()]
    table = markdown_table(["requests", "count", "generated tokens", "tokens/s",
                            "engine steps", "mask ms per step"], rows)
    notes = (f"constrained / free = {cons_tps / free_tps:.2f} (target >= 0.85). SmolLM2 fp32, "
             f"{opts.slots} slots, the {len(accepted) // opts.copies} prompts of "
             f"examples/structured.jsonl x {opts.copies}, greedy, max_tokens 128 (the free twins: "
             "exactly the constrained lengths); median of "
             f"{opts.runs} alternating runs. Mask time is llguidance's, per step with at least "
             "one constrained row, computed on a helper thread while the forward pass runs.")
    print(table)
    print(notes)
    record("Structured output against free generation (bench/structured.py)", table, notes)


if __name__ == "__main__":
    main()
