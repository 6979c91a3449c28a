"""Interactive calls beside bulk work, through the whole service: one worker, `llmq serve`, a
private Redis and a scratch PostgreSQL database. A low-priority batch fills the worker
(``--bulk`` chats of ``--bulk-tokens`` new tokens); ``--interactive`` streamed chat
completions of 32 tokens through the official `openai` SDK are spread over its run. Their
time to first token and total time, p50 and p99, are compared with the same completions on
the idle worker, and the batch's throughput with the batch alone, in one sitting (#28's
targets: loaded p99 time to first token at most 2x idle p99 plus one engine step; batch
throughput loss at most 5% beyond the interactive tokens' own share).

    .venv/bin/python -m bench.interactive [--model smollm2-135m] [--slots 64] [--bulk 512]
        [--bulk-tokens 256] [--interactive 16] [--runs 1] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai

from bench.common import markdown_table, median, record, workload
from bench.http import serve
from tests.private_servers import private_redis, scratch_postgres

LLMQ = [sys.executable, "-m", "llmq"]
INTERACTIVE_TOKENS = 32


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*LLMQ, *args], env={**os.environ, **env}, check=True,
                          capture_output=True, text=True).stdout


def start_worker(env: dict[str, str], slots: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*LLMQ, "worker", "--device", "cpu", "--slots", str(slots)],
                            env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while " ready." not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_call(api: openai.OpenAI, messages: list[dict[str, str]]) -> tuple[float, float]:
    """(time to first content, total) of one streamed chat completion, seconds."""
    start = time.perf_counter()
    first = None
    for chunk in api.chat.completions.create(model="x", messages=messages, stream=True,
                                             max_tokens=INTERACTIVE_TOKENS, temperature=0):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return (first if first is not None else total), total


def interactive(api: openai.OpenAI, count: int, spacing: float,
                delay: float = 0.0) -> list[tuple[float, float]]:
    """``count`` calls, one every ``spacing`` seconds from ``delay``, each on its own thread
    (a caller does not wait for the one before)."""
    prompts = workload()
    out: list[tuple[float, float]] = []
    threads = []
    start = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, start + delay + i * spacing - time.perf_counter()))
        messages = prompts[(i * 7) % len(prompts)]["messages"]
        t = threading.Thread(target=lambda m=messages: out.append(one_call(api, m)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return out


def write_batch(path: Path, n: int, tokens: int) -> Path:
    prompts = workload()
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"b{i}", "messages": prompts[i % len(prompts)][
                "messages"], "max_tokens": tokens, "ignore_eos": True}) + "\n")
    return path


def run_batch(env: dict[str, str], path: Path, api: openai.OpenAI | None = None,
              count: int = 0, expected: float = 0.0) -> tuple[float, list[tuple[float, float]]]:
    """Submits the batch at low priority and waits for it; with ``api``, sends the
    interactive calls spread over ``expected`` seconds meanwhile. Returns the batch's wall
    seconds and the calls' timings."""
    start = time.perf_counter()
    batch = json.loads(cli(env, "submit", str(path), "--priority", "low", "--json"))["batch_id"]
    calls: list[tuple[float, float]] = []
    caller = None
    if api is not None:
        spacing = expected * 0.85 / max(1, count)
        caller = threading.Thread(target=lambda: calls.extend(
            interactive(api, count, spacing, delay=expected * 0.05)))
        caller.start()
    while json.loads(cli(env, "status", batch, "--json"))["state"] != "completed":
        time.sleep(1.0)
    wall = time.perf_counter() - start
    if caller is not None:
        caller.join()
    return wall, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--bulk", type=int, default=512)
    ap.add_argument("--bulk-tokens", type=int, default=256)
    ap.add_argument("--interactive", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="llmq-interactive-"))
    results: dict[str, list[Any]] = {"idle": [], "loaded": [], "alone_s": [], "loaded_s": []}
    with private_redis() as redis_url, scratch_postgres() as db_url:
        env = {"LLMQ_DATABASE_URL": db_url, "LLMQ_BROKER_URL": redis_url,
               "LLMQ_MODEL": args.model, "LLMQ_MODEL_DIR": os.environ.get(
                   "LLMQ_MODEL_DIR", "models"), "LLMQ_FILES_DIR": str(folder / "files")}
        cli(env, "db", "upgrade")
        key = json.loads(cli(env, "keys", "create", "--name", "bench", "--json"))["key"]
        worker = start_worker(env, args.slots, folder / "worker.log")
        server, base = serve(env)
        api = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=3600)
        path = write_batch(folder / "bulk.jsonl", args.bulk, args.bulk_tokens)
        try:
            interactive(api, 2, 0.5)  # warm: the first calls compile and fill caches
            for run in range(args.runs):
                results["idle"] += interactive(api, args.interactive, 2.0)
                alone, _ = run_batch(env, path)
                loaded, calls = run_batch(env, path, api, args.interactive, alone)
                results["alone_s"].append(alone)
                results["loaded_s"].append(loaded)
                results["loaded"] += calls
                print(f"run {run + 1}: batch alone {alone:.1f} s, with calls {loaded:.1f} s; "
                      f"calls {calls}", flush=True)
        finally:
            server.terminate()
            worker.terminate()
            server.wait()
            worker.wait()
    bulk_tokens = args.bulk * args.bulk_tokens
    share = args.interactive * INTERACTIVE_TOKENS / bulk_tokens
    alone_tps = bulk_tokens / median(results["alone_s"])
    loaded_tps = bulk_tokens / median(results["loaded_s"])
    rows = []
    for name in ("idle", "loaded"):
        calls = results[name]
        first, total = [c[0] for c in calls], [c[1] for c in calls]
        rows.append([f"interactive, worker {name}", f"{statistics.median(first):.2f}",
                     f"{percentile(first, 0.99):.2f}", f"{statistics.median(total):.2f}",
                     f"{percentile(total, 0.99):.2f}", "-"])
    rows.append(["batch alone", "-", "-", "-", "-", f"{alone_tps:.1f}"])
    rows.append(["batch with the calls", "-", "-", "-", "-", f"{loaded_tps:.1f}"])
    table = markdown_table(["", "first token s p50", "p99", "total s p50", "p99",
                            "batch tokens/s"], rows)
    loss = 1 - loaded_tps / alone_tps
    notes = (f"{args.model}, one worker of {args.slots} slots, `llmq serve`, PostgreSQL and a "
             f"private Redis; a low-priority batch of {args.bulk} chats x {args.bulk_tokens} "
             f"new tokens; {args.interactive} streamed chat completions of "
             f"{INTERACTIVE_TOKENS} tokens (interactive class) per run, spread over the "
             f"batch's run, against the same on the idle worker; {args.runs} run(s). Batch "
             f"throughput loss {loss:.1%} (the calls' own tokens: {share:.1%} of the batch's).")
    print(table)
    print(notes)
    if args.record:
        record("Interactive calls beside a batch, through the service (bench/interactive.py)",
               table, notes)


if __name__ == "__main__":
    main()
