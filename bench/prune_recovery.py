"""How much of what structured pruning costs the local reconstruction recovers, on SmolLM2:
each recipe pruned plainly (the weight-times-activation ranking, nothing re-fitted), with
reconstruction (llmq/engine/compress/reconstruct.py), and with reconstruction then distillation
(llmq/engine/compress/distill.py), in fp32 so that quantization does not blur the comparison.
Fidelity on llmq's held-out prompts as `llmq model optimize` measures it; the statistics
are collected once and shared by every row. No timings: parameters and FLOPs per
token are counted.

    .venv/bin/python -m bench.prune_recovery [--recipes "FFN -10%" ...] [--distill-steps 40]
"""

from __future__ import annotations

import argparse
import time

from bench.common import markdown_table, record

RECIPES = {"FFN -10%": {"ffn": 0.1}, "FFN -25%": {"ffn": 0.25},
           "1 of 3 KV groups": {"kv_groups": 1}, "FFN -10% and 1 KV group": {"ffn": 0.1,
                                                                              "kv_groups": 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--distill-steps", type=int, default=40,
                    help="steps of distillation after the re-fit (0: no distilled rows)")
    args = ap.parse_args()

    from llmq.engine.host.threads import on_compute_thread

    on_compute_thread(lambda: run(args.recipes, args.distill_steps))


def run(names: list[str], distill_steps: int) -> None:
    from llmq.engine.compress.calibrate import collect_stats
    from llmq.engine.compress.distill import DistillSettings, distill
    from llmq.engine.compress.prune import PruneRecipe, prune
    from llmq.engine.compress.reconstruct import collect_grams
    from llmq.engine.host.process import configure_process
    from llmq.engine.model.decoder import LlamaModel
    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants.evaluate import (
        evaluate_models,
        greedy_outputs,
        heldout_messages,
        shipped_messages,
    )
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS
    from llmq.variants.recovery import recovery_text
    from llmq.variants.registry import resolve

    configure_process(threads=2, compile=False)
    ckpt = load_checkpoint(resolve("smollm2-135m"))
    base, tok = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights), ckpt.tokenizer
    chats = shipped_messages("calibration_prompts.jsonl")
    start = time.perf_counter()
    outs = greedy_outputs(base, tok, chats, CALIBRATION_NEW_TOKENS)
    stats = collect_stats(base, [tok.encode_chat(m) + o for m, o in zip(chats, outs,
                                                                        strict=True)])
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    text = recovery_text(base, tok, chats, print)
    grams = collect_grams(base, text)
    recover_s = time.perf_counter() - start
    reference = greedy_outputs(base, tok, heldout_messages(), 64)
    rows = []
    for name in names:
        opts = RECIPES[name]
        for recovery in ("plain", "re-fitted") + (("re-fitted, distilled",) * bool(
                distill_steps)):
            fitted = recovery != "plain"
            start = time.perf_counter()
            cfg, weights, report = prune(ckpt.config, ckpt.weights, stats,
                                         PruneRecipe(**opts, reconstruct=fitted),
                                         grams if fitted else None)
            if recovery.endswith("distilled"):
                weights, _ = distill(cfg, weights, ckpt.config, ckpt.weights, text,
                                     DistillSettings(distill_steps))
            seconds = time.perf_counter() - start
            fid = evaluate_models(base, LlamaModel.from_hf_weights(cfg, weights), tok,
                                  base_outputs=reference)
            rows.append([name, recovery,
                         f"{report.params_after / 1e6:.1f}M",
                         f"{report.flops_per_token_after / report.flops_per_token_before:.2f}",
                         f"{fid.kl:.3f}", f"{fid.top1:.1%}", f"{fid.same_outputs}/16",
                         f"{fid.mean_shared_prefix:.1f}", f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    report_rows(rows, calibrate_s, grams.positions, recover_s, distill_steps)


def report_rows(rows: list[list[str]], calibrate_s: float, positions: int, recover_s: float,
                distill_steps: int) -> None:
    from llmq.engine.compress.distill import DistillSettings
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS

    table = markdown_table(["pruned", "recovery", "params", "FLOPs/token vs base", "KL",
                            "top-1", "same greedy", "shared prefix", "prune + recover s"], rows)
    notes = (f"SmolLM2-135M-Instruct fp32 (134.5M parameters), 16 held-out prompts, 64 greedy "
             f"tokens, KL and top-1 teacher-forced on the base's continuation. Statistics: "
             f"the 16 calibration prompts with {CALIBRATION_NEW_TOKENS} greedy tokens each "
             f"({calibrate_s:.0f} s); recovery text: {positions} positions of "
             f"the base's sampled continuations of the same prompts, generated and "
             f"collected in {recover_s:.0f} s. Distillation (llmq/engine/compress/distill.py): "
             f"{distill_steps} steps of Adam (lr {DistillSettings(1).lr}) on batches of 4 "
             f"of those sequences, every decoder linear and norm trained, KL to the base on "
             f"the logits.")
    print(table)
    print(notes)
    record("Pruning recovery: re-fit and distillation (bench/prune_recovery.py)", table,
           notes)


if __name__ == "__main__":
    main()
