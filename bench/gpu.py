"""llmq on a CUDA GPU: the GPU recipes on the shared workload at 64 and 256 slots, and the
time of a distillation step.

The device machine of this project takes 64 MiB of files and the shipped SmolLM2 is a 98 MB
GGUF, so this runs SmolLM2-135M's architecture (its config.json) with random weights and
SmolLM2's own tokenizer: every request generates exactly NEW_TOKENS (ignore_eos), and the
kernels, shapes and step counts are the real model's, only the words are not. Fidelity
is a CPU measurement (`llmq model optimize --quantize fp8` runs fp8's emulated path there).

    .venv/bin/python -m bench.gpu prepare DIR   # here: tokenizer, config and workload
    python3 -m bench.gpu run DIR > gpu.log      # on the GPU machine: a JSON line per figure
    .venv/bin/python -m bench.gpu record gpu.log  # here: the table into BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

NEW_TOKENS = 64
DEVICE = os.environ.get("LLMQ_BENCH_DEVICE", "cuda")  # cpu: a smoke test of this script
SLOTS = (64, 256)
RUNS = 3  # timed runs of each recipe; the median is its figure
RECIPES = ("bfloat16", "fp8", "int8 (W8A8)", "float32")
DISTILL_BATCHES = (4, 16)
DISTILL_STEPS = 20


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def prepare(folder: Path) -> None:
    from bench.common import WORKLOAD
    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants.registry import builtin_model_path

    ckpt = load_checkpoint(builtin_model_path("smollm2-135m"))
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.tokenizer.save_hf_files(folder)
    (folder / "config.json").write_text(json.dumps(ckpt.config.to_hf()))
    (folder / "prompts.jsonl").write_text(WORKLOAD.read_text())


def random_weights(config: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Hugging Face names, scaled 1/sqrt(fan-in) so activations stay in range."""
    g = torch.Generator().manual_seed(seed)
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {"self_attn.q_proj": (q, c.hidden_size), "self_attn.k_proj": (kv, c.hidden_size),
              "self_attn.v_proj": (kv, c.hidden_size), "self_attn.o_proj": (c.hidden_size, q),
              "mlp.gate_proj": (c.intermediate_size, c.hidden_size),
              "mlp.up_proj": (c.intermediate_size, c.hidden_size),
              "mlp.down_proj": (c.hidden_size, c.intermediate_size)}
    w = {"model.embed_tokens.weight": torch.randn(c.vocab_size, c.hidden_size, generator=g),
         "model.norm.weight": torch.ones(c.hidden_size)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        for name, (n_out, n_in) in shapes.items():
            w[f"{p}{name}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        w[p + "input_layernorm.weight"] = torch.ones(c.hidden_size)
        w[p + "post_attention_layernorm.weight"] = torch.ones(c.hidden_size)
    return w


def load(folder: Path) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    from llmq.engine.config import ModelConfig
    from llmq.engine.model.tokenizer import load_tokenizer

    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    return config, load_tokenizer(folder), random_weights(config)


def build(recipe: str, config: Any, weights: dict[str, torch.Tensor]) -> Any:
    from llmq.engine.kernels.quantized import quantize_layers
    from llmq.engine.model.decoder import LlamaModel

    dtype = torch.float32 if recipe == "float32" else torch.bfloat16
    model = LlamaModel.from_hf_weights(config, weights, dtype=dtype, device=DEVICE)
    if recipe == "fp8":
        quantize_layers(model, "fp8")
    elif recipe.startswith("int8"):
        quantize_layers(model, "int8")
    return model.eval()


def measure(recipe: str, slots: int, folder: Path) -> dict[str, Any]:
    from llmq.contract import SamplingParams
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest

    config, tokenizer, weights = load(folder)
    chats = [json.loads(x)["messages"] for x in (folder / "prompts.jsonl").read_text().split("\n")
             if x.strip()]
    chats = [chats[i % len(chats)] for i in range(slots)]
    engine = Engine(build(recipe, config, weights), tokenizer, EngineConfig(
        slots=slots, slot_length=512, prefix_cache_entries=0, device=DEVICE))
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    engine.generate([GenerationRequest(messages=m, params=params) for m in chats[:2]])
    runs = []
    for _ in range(RUNS):
        sync()
        start = time.perf_counter()
        results = engine.generate([GenerationRequest(messages=m, params=params) for m in chats])
        sync()
        runs.append(time.perf_counter() - start)
    engine.close()
    seconds = statistics.median(runs)
    tokens = sum(r.completion_tokens for r in results)
    return {"recipe": recipe, "slots": slots, "requests": len(chats), "tokens": tokens,
            "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1),
            "tok_s_runs": [round(tokens / r, 1) for r in runs],
            "errors": sum(1 for r in results if not r.ok),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)
            if DEVICE == "cuda" else None}


def time_distillation(batch: int, folder: Path) -> dict[str, Any]:
    """Steps of distillation into a student with 10% of every FFN cut, on sequences the
    length of the recovery text's (a calibration prompt and 128 sampled tokens)."""
    from dataclasses import replace

    from llmq.engine.compress.distill import DistillSettings, distill

    config, _, teacher = load(folder)
    keep = int(config.intermediate_size * 0.9)
    student = dict(teacher)
    for i in range(config.num_layers):
        p = f"model.layers.{i}.mlp."
        student[p + "gate_proj.weight"] = teacher[p + "gate_proj.weight"][:keep]
        student[p + "up_proj.weight"] = teacher[p + "up_proj.weight"][:keep]
        student[p + "down_proj.weight"] = teacher[p + "down_proj.weight"][:, :keep]
    g = torch.Generator().manual_seed(1)
    text = [torch.randint(0, config.vocab_size, (300,), generator=g).tolist()
            for _ in range(64)]
    cuda_teacher = {k: v.to(DEVICE) for k, v in teacher.items()}
    student_config = replace(config, intermediate_size=keep)
    settings = DistillSettings(steps=3, batch=batch)
    distill(student_config, student, config, cuda_teacher, text, settings)  # warm-up
    sync()
    start = time.perf_counter()
    _, report = distill(student_config, student, config, cuda_teacher, text,
                        replace(settings, steps=DISTILL_STEPS))
    sync()
    seconds = time.perf_counter() - start
    return {"distill_batch": batch, "steps": DISTILL_STEPS, "positions": report.positions,
            "s_per_step": round(seconds / DISTILL_STEPS, 4),
            "positions_per_s": round(report.positions / seconds),
            "first_kl": round(report.first_kl, 4), "last_kl": round(report.last_kl, 4)}


def run(folder: Path) -> None:
    from llmq.engine.host.process import configure_process

    configure_process(threads=4, compile=False)
    if DEVICE == "cuda":
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "capability": torch.cuda.get_device_capability()}), flush=True)
    jobs: list[tuple[Any, tuple[Any, ...]]] = [
        (measure, (recipe, slots)) for slots in SLOTS for recipe in RECIPES]
    jobs += [(time_distillation, (batch,)) for batch in DISTILL_BATCHES]
    for fn, args in jobs:
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            print(json.dumps(fn(*args, folder)), flush=True)
        except Exception:  # one broken recipe must not hide the others' figures
            print(json.dumps({"job": fn.__name__, "args": args,
                              "error": traceback.format_exc()[-1500:]}), flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def record_log(log: Path) -> None:
    from bench.common import markdown_table, record

    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    gpu = next(x for x in lines if "gpu" in x)
    speed = {(x["recipe"], x["slots"]): x["tok_s"] for x in lines if "recipe" in x}
    rows = [[recipe] + [speed.get((recipe, s), "failed") for s in SLOTS] for recipe in RECIPES]
    table = markdown_table(["recipe"] + [f"tok/s {s} slots" for s in SLOTS], rows)
    steps = [x for x in lines if "distill_batch" in x]
    table += "\n\n" + markdown_table(
        ["distillation, sequences per step", "s per step", "positions/s"],
        [[x["distill_batch"], x["s_per_step"], x["positions_per_s"]] for x in steps])
    record("llmq on a GPU (bench/gpu.py)", table,
           f"Ran on {gpu['gpu']} (compute capability {gpu['capability']}), torch "
           f"{gpu['torch']}; the machine line above is the one that recorded it. SmolLM2-135M's "
           f"architecture with random weights and SmolLM2's tokenizer; the shared workload's "
           f"64 prompts (repeated to 256 for 256 slots), {NEW_TOKENS} new tokens, EOS ignored, "
           f"no prefix cache; median of {RUNS} timed runs after a warm-up. Distillation: "
           f"{DISTILL_STEPS} steps into a student with 10% of every FFN cut, sequences of "
           "300 tokens.")


if __name__ == "__main__":
    verb, where = sys.argv[1], Path(sys.argv[2])
    {"prepare": prepare, "run": run, "record": record_log}[verb](where)
