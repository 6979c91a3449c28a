"""Engine throughput on the shared workload (../shared/bench/README.md): generated tokens/s of
llmq's fp32 engine at 1, 8, 32 and 64 slots and of transformers' batched ``generate`` on the
same prompts, runs interleaved, medians reported, ratios from the same session. Also: how
often greedy outputs depend on batch neighbours, agreement with transformers' exact greedy
answers, and the gain of prefix caching.

    .venv/bin/python -m bench.engine [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse

from bench.common import markdown_table, median, record, run_child

NEW_TOKENS = 64


def same_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 prompts, 1 run: a smoke test")
    opts = ap.parse_args()
    runs = 1 if opts.quick else opts.runs
    limit = 16 if opts.quick else None
    configs: dict[str, dict] = {
        # one slot runs the first 16 prompts only: the full set would take minutes per run
        "llmq fp32, 1 slot (16 prompts)": {"engine": "llmq", "slots": 1, "limit": 16},
        "llmq fp32, 8 slots": {"engine": "llmq", "slots": 8},
        "llmq fp32, 32 slots": {"engine": "llmq", "slots": 32},
        "llmq fp32, 64 slots": {"engine": "llmq", "slots": 64},
        "llmq fp32, 64 slots, no prefix cache": {"engine": "llmq", "slots": 64,
                                                 "prefix_entries": 0},
        "transformers fp32, batch 64 (left padding)": {"engine": "transformers", "slots": 64},
    }
    samples: dict[str, list[dict]] = {k: [] for k in configs}
    for run in range(runs):
        for name, cfg in configs.items():
            args = {"new_tokens": NEW_TOKENS, **cfg}
            if limit:
                args["limit"] = min(limit, args.get("limit") or limit)
            res = run_child("bench.engine_child", args)
            samples[name].append(res)
            print(f"run {run + 1}/{runs} {name}: {res['tok_s']:.1f} tok/s", flush=True)
    tok_s = {k: median([s["tok_s"] for s in v]) for k, v in samples.items()}
    hf_name = "transformers fp32, batch 64 (left padding)"
    rows = []
    for name in configs:
        rows.append([name, f"{tok_s[name]:.1f}",
                     f"{median([s['peak_rss_mb'] for s in samples[name]]) / 1024:.2f} GB",
                     f"{tok_s[name] / tok_s[hf_name]:.2f}x"])
    table = markdown_table(
        ["configuration", "generated tokens/s (median)", "peak RSS", "vs transformers"], rows)

    # Greedy fidelity on the first 16 prompts: batch-1 llmq (exact, one sequence at a time)
    # against 64 slots, and against transformers' batched answers.
    one = samples["llmq fp32, 1 slot (16 prompts)"][0]["outputs"][:16]
    many = samples["llmq fp32, 64 slots"][0]["outputs"][:16]
    hf = samples[hf_name][0]["outputs"][:16]
    same_batch = sum(a == b for a, b in zip(one, many, strict=True))
    same_hf = sum(a == b for a, b in zip(one, hf, strict=True))
    mean_hf = sum(same_prefix(a, b) for a, b in zip(one, hf, strict=True)) / 16
    prefix_gain = tok_s["llmq fp32, 64 slots"] / tok_s["llmq fp32, 64 slots, no prefix cache"]
    notes = (
        f"Workload: {'16 prompts (quick)' if limit else '64 chat prompts'}, {NEW_TOKENS} new "
        f"tokens each, greedy, EOS ignored, 2 threads; model load excluded, prefill included; "
        f"median of {runs} run(s), configurations interleaved, each in its own process.\n"
        f"Greedy outputs, first 16 prompts: 64 slots equal to 1 slot on {same_batch}/16; "
        f"transformers batch 64 equal to llmq 1 slot on {same_hf}/16 "
        f"(mean shared prefix {mean_hf:.1f} of {NEW_TOKENS} tokens).\n"
        f"Prefix caching (the default system prompt and the shared instruction computed once): "
        f"{prefix_gain:.2f}x at 64 slots."
    )
    print(table)
    print(notes)
    if not opts.quick:
        record("Engine throughput (bench/engine.py)", table, notes)


if __name__ == "__main__":
    main()
