"""How much of what structured pruning costs the local reconstruction recovers, on SmolLM2:
each recipe pruned plainly (the weight-times-activation ranking, nothing re-fitted) and with
reconstruction (llmq/engine/reconstruct.py), in fp32 so that quantization does not blur the
comparison. Fidelity on llmq's held-out prompts as `llmq model optimize` measures it; the
statistics are collected once and shared by every row. No timings: parameters and FLOPs per
token are counted.

    .venv/bin/python -m bench.prune_recovery
"""

from __future__ import annotations

import time

from bench.common import markdown_table, record

RECIPES = {"FFN -10%": {"ffn": 0.1}, "FFN -25%": {"ffn": 0.25},
           "1 of 3 KV groups": {"kv_groups": 1}, "FFN -10% and 1 KV group": {"ffn": 0.1,
                                                                              "kv_groups": 1}}


def main() -> None:
    from llmq.engine.calibrate import collect_stats
    from llmq.engine.loader import load_checkpoint
    from llmq.engine.model import LlamaModel
    from llmq.engine.prune import PruneRecipe, prune
    from llmq.engine.setup import configure_process
    from llmq.variants.evaluate import (
        evaluate_models,
        greedy_outputs,
        heldout_messages,
        shipped_messages,
    )
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS, recovery_grams
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
    grams = recovery_grams(base, tok, chats, print)
    recover_s = time.perf_counter() - start
    reference = greedy_outputs(base, tok, heldout_messages(), 64)
    rows = []
    for name, opts in RECIPES.items():
        for fitted in (False, True):
            recipe = PruneRecipe(**opts, reconstruct=fitted)
            start = time.perf_counter()
            cfg, weights, report = prune(ckpt.config, ckpt.weights, stats, recipe,
                                         grams if fitted else None)
            prune_s = time.perf_counter() - start
            fid = evaluate_models(base, LlamaModel.from_hf_weights(cfg, weights), tok,
                                  base_outputs=reference)
            rows.append([name, "re-fitted" if fitted else "plain",
                         f"{report.params_after / 1e6:.1f}M",
                         f"{report.flops_per_token_after / report.flops_per_token_before:.2f}",
                         f"{fid.kl:.3f}", f"{fid.top1:.1%}", f"{fid.same_outputs}/16",
                         f"{fid.mean_shared_prefix:.1f}", f"{prune_s:.1f}"])
            print(rows[-1], flush=True)
    table = markdown_table(["pruned", "recovery", "params", "FLOPs/token vs base", "KL",
                            "top-1", "same greedy", "shared prefix", "prune s"], rows)
    notes = (f"SmolLM2-135M-Instruct fp32 (134.5M parameters), 16 held-out prompts, 64 greedy "
             f"tokens, KL and top-1 teacher-forced on the base's continuation. Statistics: "
             f"the 16 calibration prompts with {CALIBRATION_NEW_TOKENS} greedy tokens each "
             f"({calibrate_s:.0f} s); reconstruction text: {grams.positions} positions of "
             f"the base's sampled continuations of the same prompts, generated and "
             f"collected in {recover_s:.0f} s.")
    print(table)
    print(notes)
    record("Pruning recovery by local reconstruction (bench/prune_recovery.py)", table, notes)


if __name__ == "__main__":
    main()
