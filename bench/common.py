"""What every benchmark shares: the workload, child processes that measure one configuration
each (so peak memory is that configuration's own), medians, and the record in BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
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
    from llmq.engine.host.cpu import cpu_description

    return f"{cpu_description()}, {os.cpu_count()} cores, Python {platform.python_version()}"


CURRENT_BEGIN = "<!-- current figures: written by bench/common.py from the history below -->"
CURRENT_END = "<!-- end of current figures -->"
HISTORY = "# History"
HEADER = f"""# Benchmarks

Every benchmark under bench/ records its run here. First the current figures: the newest run
of each benchmark on each CPU kind (a CPU's model and the SIMD flags that choose its kernels),
with its date, commit and command; figures from different CPU kinds are not comparable. Then
the history, every run in the order it ran. `bench/common.py`'s `record` keeps both.

{CURRENT_BEGIN}
{CURRENT_END}

{HISTORY}
"""


STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, commit [^,]+, ")


def record(title: str, table: str, notes: str = "") -> None:
    """Appends one dated section to the history of BENCHMARKS.md, with the command that ran
    it, and rewrites the current figures at the top."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    # quoted as a shell needs it (variant names hold spaces and commas)
    command = " ".join(["python -m", _module_name(), shlex.join(sys.argv[1:])])
    section = (f"\n## {title}\n\n{stamp}, commit {commit()}, {machine()}\n\n"
               f"Command: `{command}`\n\n{table}\n")
    if notes:
        section += f"\n{notes}\n"
    text = RECORD.read_text() if RECORD.exists() else HEADER
    RECORD.write_text(with_current_figures(text.rstrip("\n") + "\n" + section))


def _module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def history_sections(text: str) -> list[tuple[str, str]]:
    """``(title, body)`` of every run in the history, oldest first."""
    history = text.split(f"\n{HISTORY}\n", 1)[-1]
    sections = []
    for chunk in ("\n" + history).split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections.append((title.strip(), body.strip("\n")))
    return sections


def cpu_kind(body: str) -> str:
    """The CPU of a run, from its stamp line ("DATE UTC, commit C, CPU, N cores, Python V")."""
    stamp = body.lstrip("\n").split("\n", 1)[0]
    parts = stamp.split(", ")
    cpu = ", ".join(p for p in parts[2:] if not p.endswith(" cores") and
                    not p.startswith("Python "))
    return cpu if "(" in cpu else f"{cpu} (flags not recorded)"


def with_current_figures(text: str) -> str:
    """``text`` with its current-figures block rebuilt from its history."""
    if CURRENT_BEGIN not in text:  # a record of the old form: every section is history
        _, _, sections = text.partition("\n## ")
        text = HEADER + ("\n## " + sections if sections else "")
    newest: dict[tuple[str, str], str] = {}
    for title, body in history_sections(text):
        if not STAMP.match(body):  # a section written by hand: history only
            continue
        newest.pop((title, cpu_kind(body)), None)  # re-inserted: newest order last
        newest[(title, cpu_kind(body))] = body
    index = ["| benchmark | CPU | run | command |", "|---|---|---|---|"]
    blocks = []
    for (title, cpu), body in sorted(newest.items()):
        stamp = body.split("\n", 1)[0]
        when, commit_ = stamp.split(", ")[0], stamp.split(", ")[1].removeprefix("commit ")
        script = title.rsplit("bench/", 1)[-1].rstrip(")").removesuffix(".py")
        command = next((line.removeprefix("Command: ")
                        for line in body.splitlines() if line.startswith("Command: `")),
                       f"`python -m bench.{script}` (options not recorded)")
        index.append(f"| {title} | {cpu} | {when}, {commit_} | {command} |")
        blocks.append(f"### {title}, on {cpu}\n\n{body}")
    current = "\n\n".join(["## Current figures", "\n".join(index), *blocks])
    head, rest = text.split(CURRENT_BEGIN, 1)
    tail = rest.split(CURRENT_END, 1)[1]
    return f"{head}{CURRENT_BEGIN}\n{current}\n{CURRENT_END}{tail}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
