"""What pruning the output vocabulary costs in fidelity, per head size: the base model
against itself with its head cut to the rows ``choose_tokens`` keeps on llmq's calibration
prompts (float body, float head), on the held-out prompts (KL and top-1 teacher-forced on
the base's continuation, and whole greedy outputs alike). No speed is measured here:
bench/optimize.py measures variants with pruned heads.

    .venv/bin/python -m bench.vocab_fidelity [--model gemma3-270m] [--rows 16384 32768 65536]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--rows", type=int, nargs="+", default=[16384, 32768, 65536])
    args = ap.parse_args()

    from llmq.engine.compress.head import rebuild_head
    from llmq.engine.compress.vocab import choose_tokens
    from llmq.engine.host.cpu import cpu_description
    from llmq.engine.host.process import configure_process
    from llmq.engine.model.decoder import LlamaModel
    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants.evaluate import evaluate_models, greedy_outputs
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS, read_calibration
    from llmq.variants.registry import resolve

    configure_process(threads=2, compile=False)  # fidelity is measured on the eager path
    ckpt = load_checkpoint(resolve(args.model))
    tok = ckpt.tokenizer
    base = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    chats = read_calibration(None)
    outputs = greedy_outputs(base, tok, chats, CALIBRATION_NEW_TOKENS)
    sequences = [tok.encode_chat_or_text(m) + out for m, out in zip(chats, outputs, strict=True)]
    print(f"{args.model} on {cpu_description()}: {ckpt.config.vocab_size} rows, "
          f"{len(tok.base_token_ids())} always kept, calibration {sum(map(len, sequences))} "
          f"tokens")
    print("| rows kept | KL (held-out) | top-1 (held-out) | same greedy (held-out) |")
    print("|---|---|---|---|")
    for rows in args.rows:
        start = time.perf_counter()
        kept = choose_tokens(base, sequences, rows, always=tok.base_token_ids())
        pruned = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
        rebuild_head(pruned, kept, "")
        fid = evaluate_models(base, pruned, tok)
        print(f"| {kept.numel()} | {fid.kl:.4f} | {fid.top1:.1%} | {fid.same_outputs}/16 |  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
