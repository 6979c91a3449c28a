"""Summary quality and speed of the nightly pipeline on the shipped long documents
(examples/long-documents: two licences, release notes, meeting notes; three longer than the
context), one configuration after another in one process with one model load: the pipeline
as it was (greedy, no loop stop), candidates, and the shipped defaults. Per configuration:
documents/min, and per summary distinct word trigrams, repeated sentences, compression and
salient terms mentioned (llmq.worker.pipeline.quality).

    .venv/bin/python -m bench.pipeline [--runs 1] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, markdown_table, median, record

DOCUMENTS = ROOT / "examples" / "long-documents"

# name -> LLMQ_ settings of that configuration
OLD_PROMPTS = {
    "PIPELINE_MAP_PROMPT": "Summarize this part of a longer document in a few sentences.\n\n{text}",
    "PIPELINE_COMBINE_PROMPT": "These are summaries of consecutive parts of one document. "
                               "Combine them into one summary of a few sentences.\n\n{text}",
    "PIPELINE_FINAL_PROMPT": "Summarize the following document in a few sentences.\n\n{text}",
}
NO_RETRY = {"PIPELINE_RETRY_SAMPLING": {}}

# name -> LLMQ_ settings of that configuration
CONFIGS: dict[str, dict[str, Any]] = {
    "before: instruction first, greedy, no loop stop": {
        **OLD_PROMPTS, **NO_RETRY, "PIPELINE_SAMPLING": {"stop_loops": False}},
    "instruction first, greedy + loop stop": {
        **OLD_PROMPTS, **NO_RETRY, "PIPELINE_SAMPLING": {}},
    "instruction first, repetition_penalty 1.1": {
        **OLD_PROMPTS, **NO_RETRY, "PIPELINE_SAMPLING": {"repetition_penalty": 1.1}},
    "text first, greedy + loop stop": {**NO_RETRY, "PIPELINE_SAMPLING": {}},
    "text first, frequency 0.3 + presence 0.3": {
        **NO_RETRY, "PIPELINE_SAMPLING": {"frequency_penalty": 0.3, "presence_penalty": 0.3}},
    "text first, repetition_penalty 1.1, chunks of 800": {
        **NO_RETRY, "PIPELINE_CHUNK_TOKENS": 800},
    "text first, repetition_penalty 1.1, no retry": {**NO_RETRY},
    "shipped: text first, repetition_penalty 1.1, one sampled retry": {},
}


def _environment(config: dict[str, Any], workdir: Path) -> None:
    for key in list(os.environ):
        if key.startswith("LLMQ_PIPELINE_"):
            del os.environ[key]
    os.environ["LLMQ_DATABASE_URL"] = f"sqlite:///{workdir / 'llmq.db'}"
    for key, value in config.items():
        os.environ[f"LLMQ_{key}"] = value if isinstance(value, str) else json.dumps(value)


def one_run(config: dict[str, Any], workdir: Path, engine: Any, ident: Any) -> dict[str, Any]:
    _environment(config, workdir)
    from llmq.db import pipeline as store
    from llmq.db.session import dispose_engines, session_scope
    from llmq.settings import get_settings
    from llmq.worker.pipeline.run import drive_here, start_run

    get_settings.cache_clear()
    dispose_engines()
    run_id = start_run(DOCUMENTS, name="long")
    start = time.perf_counter()
    drive_here(run_id, engine, ident)
    seconds = time.perf_counter() - start
    with session_scope() as session:
        summaries = store.run_summaries(session, run_id)
    # the quality the pipeline measured and stored with each summary
    docs = [{"document": s["document"], "summary": s["summary"], "flagged": s["flagged"],
             **s["quality"]} for s in summaries]
    return {"seconds": seconds, "docs": docs,
            "tokens": sum(s["completion_tokens"] for s in summaries)}


def _row(name: str, runs: list[dict[str, Any]]) -> list[Any]:
    seconds = median([r["seconds"] for r in runs])
    docs = runs[0]["docs"]
    n = len(docs)
    return [name, f"{n / seconds * 60:.2f}",
            f"{min(d['distinct_trigrams'] for d in docs):.2f}",
            f"{sum(d['distinct_trigrams'] for d in docs) / n:.2f}",
            sum(d["repeated_sentences"] for d in docs),
            " ".join(str(d["salient_hits"]) for d in docs),
            f"{sum(d['compression'] for d in docs) / n:.3f}",
            f"{sum(d['passes'] for d in docs)}/{n}", sum(d["flagged"] for d in docs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="configurations whose name starts so")
    ap.add_argument("--slots", type=int, default=32)
    opts = ap.parse_args()
    from llmq.engine.host.process import configure_process
    from llmq.settings import get_settings
    from llmq.worker.runtime import load_engine

    configure_process()
    settings = get_settings()
    engine, ident = load_engine(settings, settings.model, settings.device, slots=opts.slots)
    rows, texts = [], {}
    for name, config in CONFIGS.items():
        if opts.only and not any(name.startswith(o) for o in opts.only):
            continue
        runs = []
        for _ in range(opts.runs):
            with tempfile.TemporaryDirectory(prefix="llmq-bench-pipeline-") as tmp:
                runs.append(one_run(config, Path(tmp), engine, ident))
        rows.append(_row(name, runs))
        texts[name] = runs[0]["docs"]
        print(json.dumps({"config": name, "row": rows[-1], "docs": runs[0]["docs"]}), flush=True)
    engine.close()
    table = markdown_table(
        ["configuration", "documents/min", "min distinct trigrams", "mean distinct trigrams",
         "repeated sentences", "salient terms mentioned (of 10, per document)",
         "mean compression", "summaries passing the floor", "flagged"], rows)
    notes = (f"The {len(texts[next(iter(texts))])} documents of examples/long-documents, SmolLM2 "
             f"fp32, {opts.slots} slots, summaries of up to 256 tokens, model load excluded; "
             f"documents/min is the median of {opts.runs} run(s).")
    print(table)
    print(notes)
    out = ROOT / "out" / "bench-pipeline-summaries.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(texts, indent=1))
    record("Pipeline summaries on the long documents (bench/pipeline.py)", table, notes)


if __name__ == "__main__":
    main()
