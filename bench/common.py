"""What every benchmark shares: the workload, child processes that measure one configuration
each (so peak memory is that configuration's own), medians, and the record in BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = Path(os.environ.get("LLMQ_BENCH_WORKLOAD",
                               ROOT.parent / "shared" / "bench" / "prompts.jsonl"))
RECORD = ROOT / "bench" / "BENCHMARKS.md"


def workload(limit: int | None = None) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in WORKLOAD.read_text().splitlines() if x.strip()]
    return lines[:limit] if limit else lines


def run_child(module: str, args: dict[str, Any], timeout: float = 1800,
              python: str = sys.executable) -> dict[str, Any]:
    """Runs ``python -m module`` with ``args`` as JSON on stdin; returns its JSON answer."""
    proc = subprocess.run(
        [python, "-m", module], input=json.dumps(args), capture_output=True,
        text=True, timeout=timeout, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!bench/BENCHMARKS.md"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    from llmq.engine.cpu import cpu_description

    return f"{cpu_description()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def record(title: str, table: str, notes: str = "") -> None:
    """Appends one dated section to BENCHMARKS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title}\n\n{stamp}, commit {commit()}, {machine()}\n\n{table}\n"
    if notes:
        section += f"\n{notes}\n"
    if not RECORD.exists():
        RECORD.write_text("# Benchmarks\n\nFigures appended by the scripts in bench/; newest last."
                          "\n")
    with RECORD.open("a") as f:
        f.write(section)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
