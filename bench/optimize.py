"""Model variants on the shared workload (../shared/bench/README.md): size, generated tokens/s
at 32 and 64 slots, fidelity against the fp32 base, and as peers in the same run CTranslate2
int8 (installs by pip) and, with ``--openvino PYTHON``, OpenVINO GenAI (bench/openvino_peer.py).

Fidelity, two ways: KL / top-1 / greedy agreement on llmq's held-out prompts (what
`llmq model optimize` stores), and, as in the shared table of other engines, how many of the
first 16 workload prompts get the same 64 greedy tokens as the fp32 engine, with the mean
shared prefix.

    .venv/bin/python -m bench.optimize [--runs 3] [--quick] [--variants NAME ...] [--slots 64]
        [--no-peer] [--openvino /tmp/ov/bin/python] [--llmq-only] [--model gemma3-270m]

``--model``: another built-in model (its variants and exports under bench/.variants/MODEL);
transformers then runs the Hugging Face folder llmq unpacks the GGUF into, on llmq's token
ids, and a model without a chat template gets the workload's texts as plain prompts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import ROOT, markdown_table, median, record, run_child
from bench.engine import same_prefix

NEW_TOKENS = 64
VARIANTS_DIR = ROOT / "bench" / ".variants"  # git-ignored: rebuilt when missing

# name -> options as for `llmq model optimize`
VARIANTS: dict[str, dict] = {
    # what `llmq model optimize --preset cpu` builds here (kernels timed, rotation where it
    # fuses); the build log says what it chose
    "preset": {"preset": "cpu"},
    # the preset with int8 keys and values (a float32 scale per position and head)
    "preset, int8 KV cache": {"preset": "cpu", "kv_cache": "int8"},
    "bf16": {"quantize": "bf16"},
    "int8": {"quantize": "int8", "smooth_alpha": 0.5},
    # int8 with the QKV, gate/up and down inputs rotated (llmq.engine.kernels.rotated)
    "int8 rotated": {"quantize": "int8", "smooth_alpha": 0.5, "rotate": True},
    # the same int8 variant with the float head it had before the int8 head (llmq.engine.model.head)
    "int8, float head": {"quantize": "int8", "smooth_alpha": 0.5, "keep_float": ["lm_head"]},
    "vocab 24k + int8": {"quantize": "int8", "smooth_alpha": 0.5, "vocab": 24576},
    "vocab 16k + int8": {"quantize": "int8", "smooth_alpha": 0.5, "vocab": 16384},
    # the preset with its head cut to the tokens English calibration text needs: for a
    # vocabulary (Gemma 3's 262k) far larger than any one language uses
    "preset, vocab 32k": {"preset": "cpu", "vocab": 32768},
    "preset, vocab 64k": {"preset": "cpu", "vocab": 65536},
    "int4 (groups of 32)": {"quantize": "int4"},
    "ffn -10% + int8": {"quantize": "int8", "smooth_alpha": 0.5, "ffn": 0.1},
    "ffn -25% + int8": {"quantize": "int8", "smooth_alpha": 0.5, "ffn": 0.25},
    # int8 with the linears that take the widest activations (after SwiGLU), or the first
    # and last layers, left float: what greedy agreement with the base costs in speed
    "int8, float w_down": {"quantize": "int8", "smooth_alpha": 0.5, "keep_float": ["w_down"]},
    "int8, float layers 0 and 29": {
        "quantize": "int8", "smooth_alpha": 0.5,
        "keep_float": [f"{i}.{n}" for i in (0, 29)
                       for n in ("wqkv", "wo", "w_gate", "w_up", "w_down")]},
    # the same int8 variant with the float32 KV cache of the base (variants default to float16)
    "int8, float32 KV cache": {"quantize": "int8", "smooth_alpha": 0.5, "kv_cache": "float32"},
    "ffn -10% (fp32)": {"quantize": "none", "ffn": 0.1},
    "ffn -10% distilled (fp32)": {"quantize": "none", "ffn": 0.1, "distill": 40},
    "ffn -10% distilled + int8": {"quantize": "int8", "smooth_alpha": 0.5, "ffn": 0.1,
                                  "distill": 40},
}


DEFAULT_MODEL = "smollm2-135m"


def variants_dir(model: str) -> Path:
    return VARIANTS_DIR if model == DEFAULT_MODEL else VARIANTS_DIR / model


def variant_folder(name: str, model: str = DEFAULT_MODEL) -> Path:
    """Where a variant of VARIANTS is built: its name made a safe folder name."""
    return variants_dir(model) / name.replace(" ", "_").replace("/", "-").replace("%", "pc")


def build_variants(names: list[str], model: str = DEFAULT_MODEL) -> dict[str, dict]:
    """Artifacts plus their held-out fidelity, built on a compute thread (threads.py)."""
    from dataclasses import replace

    from llmq.engine.compress.prune import PruneRecipe
    from llmq.engine.host.process import configure_process
    from llmq.engine.host.threads import on_compute_thread
    from llmq.variants.evaluate import evaluate_models
    from llmq.variants.optimize import Recipe, build, preset

    configure_process(threads=2, compile=False)  # fidelity is measured on the eager path
    out = {}
    for name in names:
        opts = VARIANTS[name]
        folder = variant_folder(name, model)
        recipe = preset(opts["preset"]) if "preset" in opts else Recipe(
            prune=PruneRecipe(ffn=opts.get("ffn", 0.0)), quantize=opts["quantize"],
            smooth_alpha=opts.get("smooth_alpha"), keep_float=tuple(opts.get("keep_float", ())),
            kv_cache=opts.get("kv_cache", "float16"), distill_steps=opts.get("distill", 0),
            vocab=opts.get("vocab", 0), rotate=opts.get("rotate", False))
        if "preset" in opts:
            recipe = replace(recipe, **{k: opts[k] for k in ("kv_cache", "vocab") if k in opts})

        # the preset decides as `llmq model optimize` does: with compiled layers and the
        # native kernels on, so int8 is timed as the engine runs it (kernels/timing.py)
        def run(folder: Path = folder, recipe: Recipe = recipe,
                as_served: bool = "preset" in opts) -> dict:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            configure_process(threads=2, compile=as_served)
            try:
                base, variant, tok, manifest = build(model, recipe, folder, log=print)
            finally:
                configure_process(threads=2, compile=False)
            fid = evaluate_models(base, variant, tok)
            return {"path": str(folder), "recipe": manifest["recipe"], "kl": fid.kl,
                    "top1": fid.top1,
                    "same_heldout": fid.same_outputs,
                    "size_mb": sum(f.stat().st_size for f in folder.iterdir()) / 1e6}

        out[name] = on_compute_thread(run)
        print(f"built {name}: {out[name]}", flush=True)
    return out


def measure(configs: dict[str, dict], runs: int, limit: int | None) -> dict[str, list[dict]]:
    """Every configuration ``runs`` times, interleaved, each run in its own process."""
    samples: dict[str, list[dict]] = {k: [] for k in configs}
    for run in range(runs):
        for name, cfg in configs.items():
            args = {"new_tokens": NEW_TOKENS, **cfg}
            if limit:
                args["limit"] = limit
            module = "bench.openvino_child" if cfg["engine"] == "openvino" else \
                "bench.engine_child"
            res = run_child(module, args, 3600, python=cfg.get("python", sys.executable))
            samples[name].append(res)
            print(f"run {run + 1}/{runs} {name}: {res['tok_s']:.1f} tok/s", flush=True)
    return samples


def describe_run(runs: int, limit: int | None) -> str:
    return (
        f"Workload: {'16 prompts (quick)' if limit else '64 chat prompts'}, {NEW_TOKENS} new "
        f"tokens each, greedy, EOS ignored, 2 threads; model load excluded, prefill included; "
        f"median of {runs} run(s), configurations interleaved, each in its own process. "
        "Held-out fidelity: 16 prompts shipped in llmq/data, 64 greedy tokens, KL and top-1 "
        "teacher-forced on the base's continuation. Workload agreement: first 16 prompts, "
        "64-token greedy outputs against the fp32 engine at 64 slots.")


def run_configs(built: dict[str, dict], slots_wanted: list[int], no_peer: bool,
                openvino: str | None, llmq_only: bool = False,
                model: str = DEFAULT_MODEL) -> dict[str, dict]:
    """What to measure: the base and every variant at the slots asked for, and the peers."""
    configs: dict[str, dict] = {}
    for slots in sorted(set(slots_wanted) | {64}):  # 64: the reference of every ratio
        configs[f"fp32 base, {slots} slots"] = {"engine": "llmq", "slots": slots,
                                                "base": model}
        for name, info in built.items():
            configs[f"{name}, {slots} slots"] = {"engine": "llmq", "slots": slots,
                                                 "model": info["path"]}
    if llmq_only:
        return configs
    transformers: dict = {"engine": "transformers", "slots": 64}
    if model != DEFAULT_MODEL:
        from bench.openvino_peer import unpacked

        hf, ids = unpacked(model, variants_dir(model))
        transformers.update(hf_dir=str(hf), prompt_ids=ids)
    configs["transformers fp32, batch 64 (left padding)"] = transformers
    if not no_peer and model == DEFAULT_MODEL:  # CTranslate2 converts Llama only
        configs["CTranslate2 4.8.5 int8, batch 32"] = {
            "engine": "ctranslate2", "slots": 32, "quantization": "int8",
            "ct2_dir": str(VARIANTS_DIR / "ct2-int8")}
    if openvino:
        from bench.openvino_peer import configs as openvino_configs

        configs.update(openvino_configs(openvino, variants_dir(model), model=model))
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 prompts, 1 run: a smoke test")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--no-peer", action="store_true", help="skip CTranslate2")
    ap.add_argument("--llmq-only", action="store_true",
                    help="no peers at all: llmq's variants against its base, for more runs")
    ap.add_argument("--openvino", metavar="PYTHON",
                    help="a Python with openvino-genai and optimum-intel: OpenVINO peer rows")
    ap.add_argument("--slots", type=int, nargs="*", default=[32, 64], choices=[32, 64])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a built-in model")
    opts = ap.parse_args()
    runs = 1 if opts.quick else opts.runs
    limit = 16 if opts.quick else None
    built = build_variants(opts.variants, opts.model)
    from llmq.variants.registry import builtin_model_path

    configs = run_configs(built, opts.slots, opts.no_peer, opts.openvino, opts.llmq_only,
                          opts.model)
    peers = [name for name, cfg in configs.items() if cfg["engine"] != "llmq"]
    samples = measure(configs, runs, limit)
    tok_s = {k: median([s["tok_s"] for s in v]) for k, v in samples.items()}
    reference = samples["fp32 base, 64 slots"][0]["outputs"][:16]

    def agreement(name: str) -> str:
        outs = samples[name][0]["outputs"][:16]
        same = sum(a == b for a, b in zip(reference, outs, strict=True))
        shared = sum(same_prefix(a, b) for a, b in zip(reference, outs, strict=True)) / 16
        return f"{same}/16 ({shared:.0f})"

    base_path = builtin_model_path(opts.model)
    base_size = base_path.stat().st_size / 1e6
    rows = []
    fp32_64 = tok_s["fp32 base, 64 slots"]
    for name in ["fp32 base", *built]:
        info = built.get(name, {"size_mb": base_size, "kl": 0.0, "top1": 1.0,
                                "same_heldout": 16})
        t32, t64 = tok_s.get(f"{name}, 32 slots"), tok_s[f"{name}, 64 slots"]
        size = f"{info['size_mb']:.0f}" + (f" ({base_path.name})" if name == "fp32 base"
                                           else "")
        rows.append([name, size, f"{t32:.1f}" if t32 else "", f"{t64:.1f}", f"{t64 / fp32_64:.2f}x",
                     f"{info['kl']:.4f}", f"{info['top1']:.1%}", f"{info['same_heldout']}/16",
                     agreement(f"{name}, 64 slots")])
    for peer in peers:
        rate, at32 = f"{tok_s[peer]:.1f}", configs[peer]["slots"] == 32
        rows.append([peer, "", rate if at32 else "", "" if at32 else rate,
                     f"{tok_s[peer] / fp32_64:.2f}x", "", "", "", agreement(peer)])
    table = markdown_table(
        ["variant", "size MB", "tok/s 32 slots", "tok/s 64 slots", "vs fp32 (64)",
         "KL (held-out)", "top-1 (held-out)", "same greedy (held-out)",
         "same as fp32 (workload, shared prefix)"], rows)
    notes = f"Model: {opts.model}. " + describe_run(runs, limit)
    print(table)
    print(notes)
    if not opts.quick:
        title = "Model variants (bench/optimize.py)"
        record(title if opts.model == DEFAULT_MODEL else f"{title}, {opts.model}", table, notes)


if __name__ == "__main__":
    main()
