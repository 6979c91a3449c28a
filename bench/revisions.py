"""The same engine configurations under two source trees, interleaved in one sitting: the
before-and-after check of a change that should not move speed (a refactor), or of one that
should. Each run is its own process with ``PYTHONPATH`` at one tree; the trees alternate
order from run to run; medians and their ratio are reported.

    git worktree add /tmp/before REV
    .venv/bin/python -m bench.revisions --before /tmp/before [--after .] [--runs 5]
        [--model gemma3-270m] [--slot-length 2048]

The preset runs where its artifact has been built (bench/optimize.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, markdown_table, median, record

NEW_TOKENS = 64


def run_in(tree: Path, args: dict) -> float:
    """Generated tokens/s of one bench.engine_child run with llmq imported from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-m", "bench.engine_child"], input=json.dumps(args),
                          capture_output=True, text=True, cwd=tree, env=env, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{tree}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the old tree")
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default="smollm2-135m", help="a built-in model")
    ap.add_argument("--variant", type=Path,
                    help="a variant artifact both trees load (default: the model's preset as "
                         "bench/optimize.py builds it)")
    ap.add_argument("--slot-length", type=int, default=512,
                    help="context per slot (windowed layers differ only past their window)")
    opts = ap.parse_args()
    from bench.optimize import variant_folder

    trees = {"before": opts.before.resolve(), "after": opts.after.resolve()}
    common = {"engine": "llmq", "slots": 64, "slot_length": opts.slot_length}
    configs = {"fp32 base, 64 slots": {**common, "model": opts.model}}
    variant = opts.variant or variant_folder("preset", opts.model)
    if variant.is_dir():
        configs["preset, 64 slots"] = {**common, "model": str(variant)}
    samples: dict[tuple[str, str], list[float]] = {(c, t): [] for c in configs for t in trees}
    for run in range(opts.runs):
        order = list(trees) if run % 2 == 0 else list(reversed(trees))
        for name, cfg in configs.items():
            for tree in order:
                rate = run_in(trees[tree], {"new_tokens": NEW_TOKENS, **cfg})
                samples[(name, tree)].append(rate)
                print(f"run {run + 1}/{opts.runs} {name}, {tree}: {rate:.1f} tok/s", flush=True)
    rows = []
    for name in configs:
        before, after = samples[(name, "before")], samples[(name, "after")]
        rows.append([name, f"{median(before):.1f}", f"{median(after):.1f}",
                     f"{median(after) / median(before):.3f}x",
                     ", ".join(f"{x:.0f}" for x in before), ", ".join(f"{x:.0f}" for x in after)])
    table = markdown_table(["configuration", "before tok/s (median)", "after tok/s (median)",
                            "after / before", "before runs", "after runs"], rows)
    notes = (f"Before: {trees['before']} ({_revision(trees['before'])}); after: "
             f"{trees['after']} ({_revision(trees['after'])}). Model {opts.model}, "
             f"{opts.slot_length} positions per slot. The shared workload, 64 chat "
             f"prompts, {NEW_TOKENS} new tokens each, greedy, EOS ignored, 2 threads; "
             f"{opts.runs} runs of each, the trees' order alternating, each in its own process.")
    print(table)
    print(notes)
    record("Before and after a change (bench/revisions.py)", table, notes)


def _revision(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "not a git checkout"


if __name__ == "__main__":
    main()
