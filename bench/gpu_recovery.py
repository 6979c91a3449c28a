"""How much distillation on a GPU buys back what pruning costs SmolLM2, with its real weights:
the held-out fidelity of FFN-pruned students (pruned and re-fitted as `llmq model optimize`
does) after growing numbers of distillation steps from the base, on text the base samples
from the shipped calibration prompts (never the held-out ones).

The question issue 11 leaves open: on 2 CPU cores, 40 steps of 4 sequences move a pruned
student's held-out top-1 by about a point, so no pruned preset keeps 90%. Is recovery a GPU
job of minutes, of hours, or no job at all at this size? Each line this prints is one point
of that curve; nothing comes back but the figures.

The device machine takes 64 MiB of files a call and the GGUF is 98 MB, so ``prepare`` splits
it in two; the parts travel in two calls made back to back (a warm machine keeps the ignored
files of the call before), and ``run`` joins them there. The device's Python lacks a few of
llmq's dependencies: download their cp312 wheels into .whl/ here first (pydantic,
pydantic-core, annotated-types, typing-inspection, pydantic-settings, python-dotenv, gguf)
and install them there with ``pip install --no-deps .whl/*``.

    .venv/bin/python -m bench.gpu_recovery prepare .gpu-recovery     # here
    (device) carry .gpu-recovery/part-0 and .whl: `true`
    (device, at once) carry .gpu-recovery/part-1:
        `pip install -q --no-deps .whl/* && python3 -m bench.gpu_recovery run .gpu-recovery
         > $OUT/recovery.log`
    .venv/bin/python -m bench.gpu_recovery record recovery.log       # here

``LLMQ_BENCH_DEVICE=cpu`` runs it on the CPU (with ``prepare --gguf`` naming a small model
and small ``run`` options, a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

DEVICE = os.environ.get("LLMQ_BENCH_DEVICE", "cuda")
PART_BYTES = 50 * 2**20
STEPS = (0, 250, 500, 1000, 1500)  # cumulative distillation steps at which fidelity is taken


def prepare(folder: Path, gguf: Path | None) -> None:
    from llmq.variants.registry import builtin_model_path

    data = (gguf or builtin_model_path("smollm2-135m")).read_bytes()
    half = -(-len(data) // 2)
    if half > PART_BYTES:
        raise SystemExit(f"{len(data)} bytes do not fit two parts of {PART_BYTES}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (folder / f"part-{i}").write_bytes(data[i * half:(i + 1) * half])


def joined(folder: Path) -> Path:
    model = folder / "model.gguf"
    if not model.is_file():
        with model.open("wb") as out:
            for i in range(2):
                with (folder / f"part-{i}").open("rb") as part:
                    shutil.copyfileobj(part, out)
    return model


def sampled_text(model: Any, tok: Any, chats: list, samples: int, new_tokens: int
                 ) -> list[list[int]]:
    """The base's sampled continuations of every calibration prompt, ``samples`` seeds each."""
    from llmq.contract import SamplingParams
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest

    requests = [GenerationRequest(messages=m, params=SamplingParams(
        max_tokens=new_tokens, temperature=0.8, seed=seed, ignore_eos=True))
        for seed in range(samples) for m in chats]
    engine = Engine(model, tok, EngineConfig(slots=min(256, len(requests)),
                                             slot_length=1024, prefix_cache_entries=0))
    outputs = engine.generate_here(requests)
    engine.close()
    return [tok.encode_chat(r.messages or []) + o.token_ids
            for r, o in zip(requests, outputs, strict=True)]


def calibrated(ckpt: Any, samples: int, new_tokens: int) -> dict[str, Any]:
    """What every student starts from: the base on the CPU and on the device, its
    calibration statistics and re-fit Gram matrices, the training text, and the base's
    held-out greedy outputs."""
    from llmq.engine.compress.calibrate import collect_stats
    from llmq.engine.compress.reconstruct import collect_grams
    from llmq.engine.model.decoder import LlamaModel
    from llmq.variants.evaluate import greedy_outputs, heldout_messages
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS, read_calibration
    from llmq.variants.recovery import RECOVERY_SAMPLES

    tok, chats = ckpt.tokenizer, read_calibration(None)
    base_cpu = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    outputs = greedy_outputs(base_cpu, tok, chats, CALIBRATION_NEW_TOKENS)
    stats = collect_stats(base_cpu, [tok.encode_chat(m) + out
                                     for m, out in zip(chats, outputs, strict=True)])
    base = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights, device=DEVICE).eval()
    started = time.perf_counter()
    text = sampled_text(base, tok, chats, samples, new_tokens)
    # the re-fit sees what `llmq model optimize` gives it: RECOVERY_SAMPLES seeds a prompt
    grams = collect_grams(base_cpu, text[:RECOVERY_SAMPLES * len(chats)])
    return {"base": base, "stats": stats, "grams": grams, "text": text,
            "text_seconds": round(time.perf_counter() - started, 1),
            "base_outputs": greedy_outputs(base, tok, heldout_messages(), 64)}


def recovery_curve(ckpt: Any, ready: dict[str, Any], ffn: float, steps: tuple[int, ...],
                   batch: int, lr: float, folder: Path) -> None:
    """One JSON line per point of ``steps``: the student's held-out fidelity after that many
    steps in all (each round resumes the one before, Adam's moments included)."""
    from llmq.engine.compress.distill import DistillSettings, distill
    from llmq.engine.compress.prune import PruneRecipe, flops_per_token, prune
    from llmq.engine.model.decoder import LlamaModel
    from llmq.variants.evaluate import evaluate_models

    config, weights, _ = prune(ckpt.config, ckpt.weights, ready["stats"], PruneRecipe(ffn=ffn),
                               ready["grams"])
    teacher = {k: v.to(DEVICE) for k, v in ckpt.weights.items()}
    checkpoint = folder / f"student-{ffn}.safetensors"
    checkpoint.unlink(missing_ok=True)
    seconds = positions = 0.0
    for total in steps:
        trained = weights
        if total:
            started = time.perf_counter()
            trained, report = distill(config, weights, ckpt.config, teacher, ready["text"],
                                      DistillSettings(total, lr=lr, batch=batch,
                                                      save_every=total),
                                      checkpoint=checkpoint, fingerprint=f"ffn {ffn}")
            seconds += time.perf_counter() - started
            positions += report.positions
        student = LlamaModel.from_hf_weights(config, trained, device=DEVICE).eval()
        fid = evaluate_models(ready["base"], student, ckpt.tokenizer,
                              base_outputs=ready["base_outputs"])
        print(json.dumps({
            "ffn": ffn, "steps": total, "batch": batch, "lr": lr,
            "positions": int(positions), "train_seconds": round(seconds, 1),
            "top1": round(fid.top1, 4), "kl": round(fid.kl, 4),
            "same_outputs": fid.same_outputs, "mean_shared_prefix": fid.mean_shared_prefix,
            "flops_per_token": flops_per_token(config),
            "base_flops_per_token": flops_per_token(ckpt.config)}), flush=True)
        del student


def run(folder: Path, args: argparse.Namespace) -> None:
    from llmq.engine.host.process import configure_process
    from llmq.engine.model.loader import load_checkpoint

    configure_process(threads=args.threads, compile=False)
    if DEVICE == "cuda":
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}),
              flush=True)
    ckpt = load_checkpoint(joined(folder))
    ready = calibrated(ckpt, args.samples, args.new_tokens)
    print(json.dumps({"text_sequences": len(ready["text"]),
                      "text_positions": sum(map(len, ready["text"])),
                      "text_seconds": ready["text_seconds"]}), flush=True)
    for ffn in args.ffn:
        recovery_curve(ckpt, ready, ffn, tuple(args.steps), args.batch, args.lr, folder)


def record_log(log: Path) -> None:
    from bench.common import markdown_table, record

    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    gpu = next((x for x in lines if "gpu" in x), {"gpu": "cpu", "torch": torch.__version__})
    text = next(x for x in lines if "text_sequences" in x)
    rows = [[f"-{x['ffn']:.0%}", x["steps"], x["positions"], x["train_seconds"],
             f"{x['top1']:.1%}", x["kl"], f"{x['same_outputs']}/16",
             f"{x['flops_per_token'] / x['base_flops_per_token']:.2f}"]
            for x in lines if "ffn" in x]
    table = markdown_table(["FFN cut", "distillation steps", "positions", "train s",
                            "held-out top-1", "KL", "same greedy", "FLOPs vs base"], rows)
    first = next(x for x in lines if "ffn" in x)
    record("Pruned SmolLM2 recovered by distillation on a GPU (bench/gpu_recovery.py)", table,
           f"Ran on {gpu['gpu']}, torch {gpu['torch']}. Students pruned and re-fitted as "
           f"`llmq model optimize` does, then distilled in float32 (batch {first['batch']}, "
           f"lr {first['lr']}) on {text['text_sequences']} sampled continuations of the "
           f"shipped calibration prompts ({text['text_positions']} positions); fidelity on "
           "the 16 held-out prompts, 64 greedy tokens, against the float32 base.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verb", choices=("prepare", "run", "record"))
    ap.add_argument("where", type=Path)
    ap.add_argument("--gguf", type=Path, help="prepare: another model (smoke tests)")
    ap.add_argument("--ffn", type=float, nargs="+", default=[0.25])
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--samples", type=int, default=64, help="sampled continuations a prompt")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    if args.verb == "prepare":
        prepare(args.where, args.gguf)
    elif args.verb == "run":
        run(args.where, args)
    else:
        record_log(args.where)


if __name__ == "__main__":
    main()
