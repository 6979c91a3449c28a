"""Where the shared workload's time goes, prefill or decode, for llmq and for OpenVINO GenAI
side by side: each engine runs the 64 prompts once for 1 new token (prefill and one step)
and once for the workload's 64; decode is the difference. The workload reads 12,800 prompt
tokens for 4,096 generated ones, so prompt work (linears at thousands of rows, prompt
attention) can outweigh decoding; this says by how much, and in which half a peer is ahead.

    .venv/bin/python -m bench.prefill_split --openvino /tmp/ov/bin/python [--runs 3]
        [--variant int8]   # a folder bench/optimize.py built, beside the fp32 base
"""

from __future__ import annotations

import argparse

from bench.common import markdown_table, median, record, run_child
from bench.optimize import NEW_TOKENS, VARIANTS_DIR, variant_folder

OPENVINO_ROWS = {"fp32": "OpenVINO GenAI fp32, f32 precision and KV cache",
                 "int8": "OpenVINO GenAI int8 weights, f32 precision"}


def engines(openvino: str, variant: str) -> dict[str, dict]:
    """Each engine's child-process arguments, without the number of new tokens."""
    from bench.openvino_peer import configs as openvino_configs

    peers = openvino_configs(openvino, VARIANTS_DIR)
    folder = variant_folder(variant)
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: build it with "
                         f"`python -m bench.optimize --variants {variant!r}` first")
    return {"llmq fp32": {"engine": "llmq", "slots": 64},
            f"llmq {variant}": {"engine": "llmq", "slots": 64, "model": str(folder)},
            "OpenVINO fp32": peers[OPENVINO_ROWS["fp32"]],
            "OpenVINO int8 weights": peers[OPENVINO_ROWS["int8"]]}


def measure(configs: dict[str, dict], runs: int) -> dict[tuple[str, int], list[float]]:
    """Seconds per (engine, new tokens), engines and lengths interleaved in every run."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for run in range(runs):
        for new_tokens in (1, NEW_TOKENS):
            for name, cfg in configs.items():
                module = ("bench.openvino_child" if cfg["engine"] == "openvino"
                          else "bench.engine_child")
                kwargs = {"python": cfg["python"]} if "python" in cfg else {}
                res = run_child(module, {**cfg, "new_tokens": new_tokens}, 1800, **kwargs)
                seconds.setdefault((name, new_tokens), []).append(res["seconds"])
                print(f"run {run + 1}/{runs} {name}, {new_tokens} new: {res['seconds']:.2f} s",
                      flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--openvino", metavar="PYTHON", required=True,
                    help="a Python with openvino-genai and optimum-intel")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    configs = engines(opts.openvino, opts.variant)
    seconds = measure(configs, opts.runs)
    rows = []
    for name in configs:
        prefill = median(seconds[(name, 1)])
        whole = median(seconds[(name, NEW_TOKENS)])
        rows.append([name, f"{prefill:.2f}", f"{whole - prefill:.2f}", f"{whole:.2f}",
                     f"{prefill / whole:.0%}", f"{64 * NEW_TOKENS / whole:.1f}"])
    table = markdown_table(["engine", "prefill s (1 new token)", "decode s (the rest)",
                            f"whole s ({NEW_TOKENS} new tokens)", "prefill share",
                            "tok/s"], rows)
    notes = (f"The shared workload's 64 prompts, 64 slots or sequences, 2 threads, greedy, EOS "
             f"ignored; median seconds of {opts.runs} runs per row and length, engines and "
             "lengths interleaved, each run in its own process, model load and warm-up "
             "excluded. Decode is the median whole run less the median 1-token run.")
    print(table)
    print(notes)
    record("Prefill and decode (bench/prefill_split.py)", table, notes)


if __name__ == "__main__":
    main()
