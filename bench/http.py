"""The HTTP API against the CLI, on PostgreSQL and a private Redis, no workers (the batches
stay queued): a 50,000-line file uploaded and its batch created until it is in_progress,
against `llmq submit` of the same file, side by side, median of several runs; then GET of
one batch with 1,000 batches stored, latency percentiles over many calls.

    .venv/bin/python -m bench.http [--lines 50000] [--runs 3] [--batches 1000] [--gets 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from bench.common import markdown_table, median, record
from tests.private_servers import private_redis, scratch_postgres

LLMQ = [sys.executable, "-m", "llmq"]


def write_file(path: Path, lines: int) -> Path:
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "max_tokens": 64, "messages": [
                                    {"role": "user", "content": f"Summarize item {i}."}]}})
                    + "\n")
    return path


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*LLMQ, *args], env={**os.environ, **env}, check=True,
                          capture_output=True, text=True).stdout


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*LLMQ, "serve", "--port", str(port), "--log-level", "warning"],
                            env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(base + "/healthz", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("llmq serve did not start")


def http_submit(api: openai.OpenAI, path: Path, run: int) -> dict[str, float]:
    start = time.perf_counter()
    with path.open("rb") as f:
        file_id = api.files.create(file=f, purpose="batch").id
    uploaded = time.perf_counter()
    batch = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"run": str(run)})
    assert batch.status == "in_progress", batch.status
    end = time.perf_counter()
    api.batches.cancel(batch.id)  # keeps the queued count under the caps
    return {"upload": uploaded - start, "create": end - uploaded, "total": end - start}


def get_latency(api: openai.OpenAI, base: str, key: str, batches: int, gets: int
                ) -> dict[str, float]:
    small = write_file(Path(tempfile.mkdtemp()) / "one.jsonl", 1)
    with small.open("rb") as f:
        file_id = api.files.create(file=f, purpose="batch").id
    ids = [api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"n": str(i)}).id
           for i in range(batches)]
    times = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        for i in range(gets):
            start = time.perf_counter()
            http.get(f"/v1/batches/{ids[(i * 7919) % len(ids)]}").raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
            "max": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="llmq-bench-http-"))
    path = write_file(folder / "requests.jsonl", args.lines)
    with private_redis() as redis_url, scratch_postgres() as db_url:
        env = {"LLMQ_DATABASE_URL": db_url, "LLMQ_BROKER_URL": redis_url,
               "LLMQ_FILES_DIR": str(folder / "files")}
        cli(env, "db", "upgrade")
        key = json.loads(cli(env, "keys", "create", "--name", "bench", "--json"))["key"]
        proc, base = serve(env)
        try:
            api = openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=600)
            cli_times, http_times = [], []
            for run in range(args.runs):  # alternated, so drift hits both alike
                start = time.perf_counter()
                batch_id = json.loads(cli(env, "submit", str(path), "--json"))["batch_id"]
                cli_times.append(time.perf_counter() - start)
                cli(env, "cancel", batch_id)
                http_times.append(http_submit(api, path, run))
            latency = get_latency(api, base, key, args.batches, args.gets)
        finally:
            proc.terminate()
            proc.wait()
    report(args, cli_times, http_times, latency, path.stat().st_size)


def report(args: Any, cli_times: list[float], http_times: list[dict[str, float]],
           latency: dict[str, float], size: int) -> None:
    cli_s = median(cli_times)
    http_s = median([t["total"] for t in http_times])
    rows = [
        ["`llmq submit` (process start included)", f"{cli_s:.2f}", "1.00x"],
        ["HTTP upload + create, until in_progress", f"{http_s:.2f}", f"{http_s / cli_s:.2f}x"],
        ["... of which upload", f"{median([t['upload'] for t in http_times]):.2f}", ""],
        ["... of which create (parse, store, send)",
         f"{median([t['create'] for t in http_times]):.2f}", ""],
    ]
    table = markdown_table(["what", "seconds (median)", "vs CLI"], rows)
    table += "\n\n" + markdown_table(
        ["GET /v1/batches/{id}", "p50 ms", "p99 ms", "max ms"],
        [[f"{args.batches} batches stored, {args.gets} calls", f"{latency['p50']:.1f}",
          f"{latency['p99']:.1f}", f"{latency['max']:.1f}"]])
    print(table)
    record("HTTP API: bulk submit and batch reads (bench/http.py)", table,
           f"{args.lines:,} lines ({size / 1e6:.1f} MB), {args.runs} runs each, alternated; "
           "PostgreSQL and a private Redis, no worker.")


if __name__ == "__main__":
    main()
