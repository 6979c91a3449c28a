"""Pipeline throughput on the sample documents (examples/documents): the embedded default
(`llmq pipeline summarize --local`) with SmolLM2, chunks of 600 tokens so that the long
document goes through map-reduce. Documents/min and generated tokens/s, model load excluded.

    .venv/bin/python -m bench.pipeline [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, markdown_table, median, record

CHUNK_TOKENS = 600


def one_run(workdir: Path) -> dict:
    os.environ["LLMQ_DATABASE_URL"] = f"sqlite:///{workdir / 'llmq.db'}"
    from llmq.db import pipeline as store
    from llmq.db.session import dispose_engines, session_factory, session_scope
    from llmq.settings import get_settings
    from llmq.variants.registry import tokenizer_for
    from llmq.worker.embedded import load_engine
    from llmq.worker.pipeline.advance import advance
    from llmq.worker.pipeline.run import start_run
    from llmq.worker.processing import process_ids

    get_settings.cache_clear()
    dispose_engines()
    docs = workdir / "docs"
    shutil.copytree(ROOT / "examples" / "documents", docs)
    run_id = start_run(docs, name="samples", chunk_tokens=CHUNK_TOKENS, overlap_tokens=32)
    engine, ident = load_engine(get_settings().model, slots=32)
    tokenizer = tokenizer_for(get_settings().model)
    sessions = session_factory()
    start = time.perf_counter()
    levels = 0
    while True:
        with sessions.begin() as session:
            step = advance(session, run_id, tokenizer)
        if step.finished:
            break
        levels += 1
        process_ids(sessions, engine, step.new_ids, ident, max_attempts=3)
    seconds = time.perf_counter() - start
    engine.close()
    with session_scope() as session:
        summaries = store.run_summaries(session, run_id)
    tokens = sum(s["completion_tokens"] for s in summaries)
    requests = sum(s["requests"] for s in summaries)
    return {"docs": len(summaries), "seconds": seconds, "tokens": tokens,
            "requests": requests, "rounds": levels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    results = []
    for i in range(opts.runs):
        with tempfile.TemporaryDirectory(prefix="llmq-bench-pipeline-") as tmp:
            res = one_run(Path(tmp))
        results.append(res)
        print(f"run {i + 1}: {res}", flush=True)
    seconds = median([r["seconds"] for r in results])
    r0 = results[0]
    table = markdown_table(["measure", "median"], [
        ["documents", r0["docs"]],
        ["generation requests (chunk, combine and final summaries)", r0["requests"]],
        ["rounds of the run (levels planned)", r0["rounds"]],
        ["wall seconds, model load excluded", f"{seconds:.1f}"],
        ["documents/min", f"{r0['docs'] / seconds * 60:.1f}"],
        ["generated tokens/s", f"{median([r['tokens'] / r['seconds'] for r in results]):.1f}"],
    ])
    notes = (f"`llmq pipeline summarize examples/documents --local --chunk-tokens "
             f"{CHUNK_TOKENS} --overlap 32` equivalent, SmolLM2 fp32, 32 slots, greedy, "
             f"summaries of up to 256 tokens (EOS ends them); median of {opts.runs} runs, each "
             "on a fresh SQLite database.")
    print(table)
    print(notes)
    record("Pipeline on the sample documents (bench/pipeline.py)", table, notes)


if __name__ == "__main__":
    main()
