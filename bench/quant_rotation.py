"""How much an orthogonal rotation of the int8 layers' inputs recovers of what W8A8 costs,
before anyone builds the kernels for it. Per-token int8 activations lose most where a few
channels dwarf the rest; rotating a layer's input by a block-diagonal Hadamard matrix H
(blocks of 16-512 channels, random signs) spreads those channels over the block, and
``y = x W^T = (x H)(W H)^T`` keeps the function. Each rotation here is applied online, as a
float matmul on the quantized input (after the RMSNorm's weight and SmoothQuant, or after
``silu(gate) * up``): a simulation of the maths, slow, with no kernel of its own.

Fidelity on llmq's held-out prompts as `llmq model optimize` measures it; every row is the
int8 recipe of ``--preset cpu`` (SmoothQuant 0.5, int8 head) plus its rotations. No timings.

    .venv/bin/python -m bench.quant_rotation [--rows ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import nn

from bench.common import markdown_table, record

# row name -> (block of the rotation before w_down, block before wqkv/w_gate/w_up; 0: none)
ROWS = {"int8 (the preset)": (0, 0), "rotated w_down input, blocks of 16": (16, 0),
        "rotated w_down input, blocks of 64": (64, 0),
        "rotated w_down input, blocks of 512": (512, 0),
        "rotated QKV and gate/up inputs, blocks of 64": (0, 64),
        "rotated w_down, QKV and gate/up inputs, blocks of 64": (64, 64)}


def block_hadamard(size: int, block: int, g: torch.Generator) -> torch.Tensor:
    """Random signs times a block-diagonal Sylvester Hadamard matrix: orthogonal."""
    from llmq.engine.kernels.rotated import hadamard

    signs = (torch.randint(0, 2, (size,), generator=g) * 2 - 1).float()
    return signs[:, None] * torch.block_diag(*[hadamard(block)] * (size // block))


class RotatedInt8(nn.Module):
    """An int8 linear layer that quantizes ``x H`` against ``W H``."""

    def __init__(self, weight: torch.Tensor, rotation: torch.Tensor) -> None:
        super().__init__()
        from llmq.engine.kernels.quantized import Int8Linear

        self.rotation = rotation
        self.inner = Int8Linear.from_float(weight @ rotation)
        self.inner.pack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x @ self.rotation)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    args = ap.parse_args()

    from llmq.engine.host.threads import on_compute_thread

    on_compute_thread(lambda: run(args.rows))


def run(names: list[str]) -> None:
    from llmq.engine.compress.calibrate import collect_stats
    from llmq.engine.compress.head import rebuild_head
    from llmq.engine.compress.smooth import smooth
    from llmq.engine.host.process import configure_process
    from llmq.engine.kernels.quantized import quantize_layers
    from llmq.engine.model.decoder import LlamaModel
    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants import registry
    from llmq.variants.evaluate import evaluate_models, greedy_outputs
    from llmq.variants.optimize import CALIBRATION_NEW_TOKENS, read_calibration

    configure_process(threads=2, compile=False)
    ckpt = load_checkpoint(registry.resolve("smollm2-135m"), None)
    c, tok = ckpt.config, ckpt.tokenizer
    base = LlamaModel.from_hf_weights(c, ckpt.weights)
    chats = read_calibration(None)
    outputs = greedy_outputs(base, tok, chats, CALIBRATION_NEW_TOKENS)
    stats = collect_stats(base, [tok.encode_chat(m) + o
                                 for m, o in zip(chats, outputs, strict=True)])
    smoothed = smooth(c, ckpt.weights, stats, 0.5)
    rows = []
    for name in names:
        down_block, input_block = ROWS[name]
        start = time.perf_counter()
        g = torch.Generator().manual_seed(1)
        model = LlamaModel.from_hf_weights(replace(c, kv_cache_dtype="float16"), smoothed)
        floats = [{n: getattr(layer, n).weight.detach().clone()
                   for n in ("wqkv", "w_gate", "w_up", "w_down")} for layer in model.layers]
        quantize_layers(model, "int8")
        for layer, w in zip(model.layers, floats, strict=True):
            if down_block:
                layer.w_down = RotatedInt8(
                    w["w_down"], block_hadamard(c.intermediate_size, down_block, g))
            if input_block:
                attn = block_hadamard(c.hidden_size, input_block, g)
                ffn = block_hadamard(c.hidden_size, input_block, g)
                layer.wqkv = RotatedInt8(w["wqkv"], attn)
                layer.w_gate, layer.w_up = RotatedInt8(w["w_gate"], ffn), \
                    RotatedInt8(w["w_up"], ffn)
        rebuild_head(model, None, "int8")
        fid = evaluate_models(base, model, tok)
        rows.append([name, f"{fid.kl:.4f}", f"{fid.top1:.1%}",
                     f"{fid.same_outputs}/{fid.sequences}", f"{fid.mean_shared_prefix:.1f}"])
        print(" | ".join(rows[-1]), f"({time.perf_counter() - start:.0f} s)", flush=True)
    table = markdown_table(["int8 recipe", "KL (held-out)", "top-1 (held-out)",
                            "same greedy (held-out)", "mean shared prefix"], rows)
    print(table)
    record("Rotated int8 inputs, simulated (bench/quant_rotation.py)", table,
           "SmolLM2-135M, SmoothQuant 0.5, int8 head, float16 KV cache. A rotated layer "
           "quantizes x H against W H, H a block-diagonal Hadamard matrix with random signs, "
           "applied online as a float matmul (the maths only: no kernel, no timing).")


if __name__ == "__main__":
    main()
