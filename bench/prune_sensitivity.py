"""Which layers of SmolLM2 can spare FFN channels: each layer alone loses a share of its
channels (ranked and re-fitted as `llmq model optimize` does, engine/compress/prune.py), and
the KL to the base is measured on the calibration text; then the layers that cost least lose
that share together, against the same number of channels taken evenly from every layer, on
the held-out prompts as `llmq model optimize` measures them. No training, fp32 throughout:
the question is whether an uneven cut keeps what an even one loses (the even FFN -10% cost
23 points of held-out top-1), which would make per-layer widths worth building.

A layer's cut is applied by zeroing the dropped channels' rows and columns and re-fitting
the down projection over the kept ones: the same function as removing them, in a model whose
layers keep one width.

    .venv/bin/python -m bench.prune_sensitivity [--ratio 0.25] [--layers 10 15]
"""

from __future__ import annotations

import argparse
import time

from bench.common import markdown_table, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratio", type=float, default=0.25,
                    help="share of a chosen layer's FFN channels removed")
    ap.add_argument("--layers", type=int, nargs="*", default=[10, 15],
                    help="how many of the cheapest layers lose that share together")
    args = ap.parse_args()

    from llmq.engine.host.threads import on_compute_thread

    on_compute_thread(lambda: run(args.ratio, args.layers))


def run(ratio: float, counts: list[int]) -> None:
    import torch
    import torch.nn.functional as F

    from llmq.engine.compress.calibrate import collect_stats
    from llmq.engine.compress.fidelity import sequence_logits
    from llmq.engine.compress.prune import CHANNEL_MULTIPLE, ffn_channels
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
    start = time.perf_counter()
    ckpt = load_checkpoint(resolve("smollm2-135m"))
    config, tok = ckpt.config, ckpt.tokenizer
    base = LlamaModel.from_hf_weights(config, ckpt.weights)
    chats = shipped_messages("calibration_prompts.jsonl")
    outs = greedy_outputs(base, tok, chats, CALIBRATION_NEW_TOKENS)
    text = [tok.encode_chat(m) + o for m, o in zip(chats, outs, strict=True)]
    # the re-fit is fitted on the base's sampled answers, as `llmq model optimize` fits it;
    # fitted on the calibration text itself, it scored 0.003 there and 1.47 held-out
    stats, grams = collect_stats(base, text), collect_grams(base, recovery_text(
        base, tok, chats, lambda _: None))
    want = [sequence_logits(base, t).float().log_softmax(-1) for t in text]
    width = config.intermediate_size

    def cut(plan: dict[int, int]) -> LlamaModel:
        """The base with layer -> channels removed, as zeros."""
        w = dict(ckpt.weights)
        for layer, removed in plan.items():
            p = f"model.layers.{layer}.mlp."
            idx, down = ffn_channels(w[p + "down_proj.weight"], stats, grams, layer,
                                     width - removed)
            dropped = torch.ones(width, dtype=torch.bool)
            dropped[idx] = False
            full = torch.zeros_like(w[p + "down_proj.weight"])
            full[:, idx] = down
            w[p + "down_proj.weight"] = full
            for name in ("gate_proj.weight", "up_proj.weight"):
                w[p + name] = w[p + name].masked_fill(dropped[:, None], 0.0)
        return LlamaModel.from_hf_weights(config, w)

    def calibration_kl(model: LlamaModel) -> float:
        kls = [F.kl_div(sequence_logits(model, t).float().log_softmax(-1), ref,
                        log_target=True, reduction="none").sum(-1).mean()
               for t, ref in zip(text, want, strict=True)]
        return float(torch.stack(kls).mean())

    per_layer = int(round(width * ratio / CHANNEL_MULTIPLE)) * CHANNEL_MULTIPLE
    sensitivity = [calibration_kl(cut({i: per_layer})) for i in range(config.num_layers)]
    order = sorted(range(config.num_layers), key=sensitivity.__getitem__)
    scan_s = time.perf_counter() - start
    print("KL on calibration text, one layer cut:",
          {i: round(k, 4) for i, k in enumerate(sensitivity)}, flush=True)

    reference = greedy_outputs(base, tok, heldout_messages(), 64)
    rows = []
    for count in counts:
        total = count * per_layer
        even = total // config.num_layers
        plans = {f"{count} cheapest layers, -{per_layer} each": {
            i: per_layer for i in order[:count]}}
        if even % CHANNEL_MULTIPLE == 0:
            plans[f"every layer, -{even} each"] = {i: even for i in range(config.num_layers)}
        for name, plan in plans.items():
            fid = evaluate_models(base, cut(plan), tok, base_outputs=reference)
            rows.append([name, f"{total / (width * config.num_layers):.1%}",
                         f"{calibration_kl(cut(plan)):.4f}", f"{fid.kl:.4f}",
                         f"{fid.top1:.1%}", f"{fid.same_outputs}/16",
                         f"{fid.mean_shared_prefix:.1f}"])
            print(rows[-1], flush=True)
    table = markdown_table(["FFN channels removed", "share of all", "KL (calibration)",
                            "KL (held-out)", "top-1 (held-out)", "same greedy (held-out)",
                            "shared prefix"], rows)
    cheapest = ", ".join(f"{i} ({sensitivity[i]:.4f})" for i in order[:max(counts)])
    dearest = ", ".join(f"{i} ({sensitivity[i]:.4f})" for i in order[-5:])
    notes = (f"SmolLM2-135M-Instruct fp32, FFN width {width}; ranking statistics on the 16 "
             f"calibration prompts with {CALIBRATION_NEW_TOKENS} greedy tokens each, the "
             f"re-fit on {grams.positions} positions of the base's sampled answers to them "
             f"(as `llmq model optimize`). One layer "
             f"at a time losing {per_layer} channels, KL to the base on that text (per "
             f"position, nats), cheapest first: {cheapest}; dearest: {dearest}. Held-out: 16 "
             f"prompts, 64 greedy tokens, KL and top-1 teacher-forced on the base's "
             f"continuation. Scan and statistics: {scan_s:.0f} s.")
    print(table)
    print(notes)
    record("FFN pruning by layer (bench/prune_sensitivity.py)", table, notes)


if __name__ == "__main__":
    main()
