"""How long llmq takes to answer, from a process's start: `llmq generate` of 4 tokens with the
base model and with its CPU preset (against `python -c "import torch"`), where the seconds of
one start go (phases timed in a child), the same with every cache empty (cold), and `llmq run`
of a short chat job with both models, run by run side by side; and how soon a worker started
with a request waiting (a killed worker's replacement) is ready and serves it.

    .venv/bin/python -m bench.startup [--runs 3] [--requests 160] [--slots 64] [--record]

Warm: the kernel timings (llmq.engine.host.measured), llmq's native kernels and inductor's
caches are filled by one unmeasured run first. Cold: `LLMQ_CACHE_DIR` and
`TORCHINDUCTOR_CACHE_DIR` point at empty folders. The preset is built once into a scratch
model folder (`llmq model optimize --preset cpu --no-measure`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import markdown_table, median, record, workload
from tests.private_servers import RedisServer

BASE, PRESET = "smollm2-135m", "smollm2-135m-cpu"
PHASES = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from llmq.contract import SamplingParams
from llmq.engine import engine as engine_module
from llmq.engine.generation import GenerationRequest
from llmq.engine.host import measured
from llmq.engine.kernels import native
from llmq.engine.model import artifact, decoder
from llmq.settings import get_settings
from llmq.worker import runtime
t2 = time.perf_counter()
spent = {{}}

def timing(owner, name, label):
    inner = getattr(owner, name)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, timed)

timing(engine_module, "load_checkpoint", "checkpoint read")
timing(engine_module, "load_variant", "checkpoint read")
timing(decoder, "pack_linears", "packing")
timing(artifact, "pack_linears", "packing a variant")
timing(measured, "remembered", "kernel timing")
timing(native, "_build", "native build")
s = get_settings()
engine, _ = runtime.load_engine(s, {model!r}, "cpu", slots={slots}, fuse_layers={fuse!r})
t3 = time.perf_counter()
engine.submit(GenerationRequest(prompt="Say hi.", params=SamplingParams(max_tokens=1))).result()
t4 = time.perf_counter()
engine.submit(GenerationRequest(prompt="Say hi.", params=SamplingParams(max_tokens=4))).result()
t5 = time.perf_counter()
engine.close()
t6 = time.perf_counter()
packing = spent.get("packing", 0.0) + spent.get("packing a variant", 0.0)
read = spent.get("checkpoint read", 0.0) - spent.get("packing a variant", 0.0)  # inside it
print(json.dumps({{"import torch": t1 - t0, "import llmq": t2 - t1, "load": t3 - t2,
                  "of it: read + dequantize": read, "of it: packing": packing,
                  "of it: kernel timing": spent.get("kernel timing", 0.0),
                  "of it: native build": spent.get("native build", 0.0),
                  "first token": t4 - t3, "4 tokens again": t5 - t4,
                  "background compile left at close": t6 - t5}}))
"""

def timed(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def generate(env: dict[str, str], model: str) -> float:
    return timed(env, sys.executable, "-m", "llmq", "generate", "Say hi.", "--max-tokens", "4",
                 "--model", model)


def phases(env: dict[str, str], model: str, slots: int, fuse: str) -> dict[str, float]:
    code = PHASES.format(model=model, slots=slots, fuse=fuse)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_job(path: Path, n: int) -> Path:
    prompts = workload()
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i:04d}",
                                "messages": prompts[i % len(prompts)]["messages"],
                                "max_tokens": 64}) + "\n")
    return path


def run_job(env: dict[str, str], model: str, job: Path, slots: int, output: Path) -> float:
    return timed(env, sys.executable, "-m", "llmq", "run", str(job), "--model", model,
                 "--slots", str(slots), "--output", str(output))


def worker_start(env: dict[str, str], model: str, slots: int, scratch: Path,
                 run: int) -> tuple[float, float]:
    """Seconds from a worker's process start to its heartbeat (ready) and to the result of
    a 4-token request that was queued before it started: what a killed worker's
    replacement takes to serve."""
    job = scratch / f"one-{model}-{run}.jsonl"
    job.write_text(json.dumps({"custom_id": "first", "prompt": "Say hi.",
                               "max_tokens": 4}) + "\n")
    out = subprocess.run([sys.executable, "-m", "llmq", "submit", str(job), "--model", model,
                          "--json"], env=env, check=True, capture_output=True, text=True)
    batch = json.loads(out.stdout)["batch_id"]
    db = create_engine(env["LLMQ_DATABASE_URL"])
    log = (scratch / "worker.log").open("ab")
    start = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "llmq", "worker", "--device", "cpu",
                               "--model", model, "--slots", str(slots)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ready = served = None
    try:
        while served is None:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}: see {log.name}")
            if time.perf_counter() - start > 300:
                raise RuntimeError("the worker served nothing in 300 s")
            with db.connect() as conn:
                if ready is None and conn.execute(text(
                        "SELECT count(*) FROM workers WHERE pid = :p AND stopped_at IS NULL"),
                        {"p": worker.pid}).scalar_one():
                    ready = time.perf_counter() - start
                if conn.execute(text("SELECT count(*) FROM requests WHERE batch_id = :b AND "
                                     "state = 'succeeded'"), {"b": batch}).scalar_one():
                    served = time.perf_counter() - start
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        db.dispose()
        log.close()
    return ready if ready is not None else served, served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="llmq-startup-"))
    env = {**os.environ, "LLMQ_DATABASE_URL": f"sqlite:///{scratch / 'gen.db'}",
           "LLMQ_MODEL_DIR": str(scratch / "models"), "LLMQ_CACHE_DIR": str(scratch / "cache"),
           "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor")}
    subprocess.run([sys.executable, "-m", "llmq", "model", "optimize", "--from", BASE,
                    "--name", PRESET, "--preset", "cpu", "--no-measure", "--exist-ok"],
                   env=env, check=True, capture_output=True)

    cold: dict[str, float] = {}
    for model in (BASE, PRESET):  # every cache empty, once per model
        fresh = {**env, "LLMQ_CACHE_DIR": str(scratch / f"cold-{model}"),
                 "TORCHINDUCTOR_CACHE_DIR": str(scratch / f"cold-inductor-{model}")}
        cold[model] = generate(fresh, model)
    for model in (BASE, PRESET):  # fills the warm caches
        generate(env, model)
        phases(env, model, args.slots, "now")

    torch_s: list[float] = []
    warm: dict[str, list[float]] = {BASE: [], PRESET: []}
    for _ in range(args.runs):  # side by side, run by run
        torch_s.append(timed(env, sys.executable, "-c", "import torch"))
        for model in (BASE, PRESET):
            warm[model].append(generate(env, model))
    target = 2 * median(torch_s) + 1
    rows = [["`python -c \"import torch\"`", f"{median(torch_s):.2f}", "", ""]]
    for model in (BASE, PRESET):
        rows.append([f"`llmq generate` 4 tokens, {model}", f"{median(warm[model]):.2f}",
                     f"{cold[model]:.2f}", f"{target:.2f}"])
    table = markdown_table(["what", "warm s (median)", "cold s", "target s"], rows)
    print(table)

    # a profile of one start: what llmq generate loads (1 slot, uncompiled), what a worker
    # loads (its slots, layers compiled now or in the background), warm and cold
    phase_rows = []
    for model, slots, fuse, caches in (
            (BASE, 1, "off", "warm"), (PRESET, 1, "off", "warm"),
            (BASE, args.slots, "now", "warm"), (PRESET, args.slots, "now", "warm"),
            (PRESET, args.slots, "in_background", "warm"),
            (BASE, 1, "off", "cold"), (PRESET, args.slots, "now", "cold")):
        where = env if caches == "warm" else {
            **env, "LLMQ_CACHE_DIR": str(scratch / f"cold-phases-{model}-{slots}"),
            "TORCHINDUCTOR_CACHE_DIR": str(scratch / f"cold-phases-inductor-{model}-{slots}")}
        p = phases(where, model, slots, fuse)
        phase_rows.append([f"{model}, {slots} slots, compiled {fuse}, {caches}",
                           *(f"{v:.2f}" for v in p.values())])
        names = list(p)
    phase_table = markdown_table(["engine", *names], phase_rows)
    print(phase_table)

    starts: dict[str, list[tuple[float, float]]] = {BASE: [], PRESET: []}
    with tempfile.TemporaryDirectory(prefix="llmq-startup-redis-") as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        try:
            brokered = {**env, "LLMQ_BROKER_URL": redis.url}
            for run in range(args.runs):
                for model in (BASE, PRESET):
                    starts[model].append(worker_start(brokered, model, args.slots, scratch,
                                                      run))
        finally:
            redis.stop()
    start_rows = [[model, f"{median([r for r, _ in v]):.2f}", f"{median([s for _, s in v]):.2f}",
                   " ".join(f"{s:.2f}" for _, s in v)] for model, v in starts.items()]
    start_table = markdown_table([f"`llmq worker`, {args.slots} slots, from process start",
                                  "ready s (median)", "first result s (median)",
                                  "first result, runs"], start_rows)
    print(start_table)

    job = write_job(scratch / "job.jsonl", args.requests)
    runs: dict[str, list[float]] = {BASE: [], PRESET: []}
    for _ in range(args.runs):
        for model in (BASE, PRESET):
            runs[model].append(run_job(env, model, job, args.slots, scratch / "run.jsonl"))
    job_rows = [[model, f"{median(v):.1f}", " ".join(f"{x:.1f}" for x in v)]
                for model, v in runs.items()]
    job_table = markdown_table([f"`llmq run` {args.requests} chat requests, 64 new tokens, "
                                f"{args.slots} slots", "wall s (median)", "runs"], job_rows)
    print(job_table)
    if args.record:
        record("Start-up: llmq generate and a short llmq run, warm and cold",
               "\n\n".join([table, "Phases of one start (seconds, one run each; `of it`: "
                            "parts of load; cold: empty LLMQ_CACHE_DIR and inductor cache):",
                            phase_table, start_table, job_table]))


if __name__ == "__main__":
    main()
