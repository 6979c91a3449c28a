"""The kernel choices of llmq's engine, measured at SmolLM2's shapes (2 threads):
fp32 GEMM through PyTorch's default (MKL) against oneDNN on a pre-packed weight, and
attention through explicit matmuls against PyTorch's fused kernel, for decode (one query per
sequence, 64 sequences) and for a prompt of ~200 tokens (the fused kernel wins there); the
low-precision GEMMs of the model variants; llmq's decode attention, eager, through inductor,
and native (llmq.engine.kernels.native, what CPU engines run), over float32 and half-precision
caches; and prompt attention through PyTorch's flash kernel against the native one, which
CPU engines now run for prompt rows too.

    .venv/bin/python -m bench.kernels
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import markdown_table, record


def per_call(fn: Callable[[], object], repeat: int = 30) -> float:
    for _ in range(3):
        fn()
    best = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best.append((time.perf_counter() - start) / repeat)
    return sorted(best)[1]


def gemm_rows() -> list[list[str]]:
    rows = []
    for tokens in (64, 2048):
        for n_in, n_out in ((576, 1536), (1536, 576), (576, 49152)):
            if n_out == 49152 and tokens > 64:
                continue
            x, w = torch.randn(tokens, n_in), torch.randn(n_out, n_in)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 64)
            flops = 2 * tokens * n_in * n_out
            mkl = flops / per_call(lambda x=x, w=w: F.linear(x, w)) / 1e9
            dnn = flops / per_call(lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(
                x, p, None, "none", [], "")) / 1e9
            rows.append([f"linear [{tokens}x{n_in}] x [{n_in}x{n_out}]", f"{mkl:.0f} GFLOP/s",
                         f"{dnn:.0f} GFLOP/s", f"{dnn / mkl:.2f}x"])
    return rows


def low_precision_rows() -> list[list[str]]:
    """The matmuls of the quantized variants at the FFN's shape, as GFLOP/s (or GOP/s)."""
    from llmq.engine.kernels.quantized import BF16Linear, Int4Linear, Int8Linear

    rows = []
    for tokens in (64, 2048):
        n_in, n_out = 576, 1536
        x, w = torch.randn(tokens, n_in), torch.randn(n_out, n_in) * 0.05
        flops = 2 * tokens * n_in * n_out
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 64)
        bf16 = BF16Linear.from_float(w)
        bf16.pack()
        xb = x.to(torch.bfloat16)
        int8 = Int8Linear.from_float(w)
        xq = torch.randint(-127, 128, (tokens, n_in), dtype=torch.int8)
        int4 = Int4Linear.from_float(w)
        timings = [
            per_call(lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(
                x, p, None, "none", [], "")),
            per_call(lambda xb=xb, m=bf16: m(xb)),
            per_call(lambda xq=xq, m=int8: torch._int_mm(xq, m.qweight.t())),
            per_call(lambda x=x, m=int8: m(x)),
            per_call(lambda x=x, m=int4: m(x)),
            per_call(lambda x=x, m=int8: torch.ops.aten._weight_int8pack_mm(
                x, m.qweight, m.scale), repeat=3),
        ]
        rows.append([f"[{tokens}x{n_in}] x [{n_in}x{n_out}]",
                     *(f"{flops / t / 1e9:.0f}" for t in timings)])
    return rows


def attention_rows() -> list[list[str]]:
    kv, group, dim, slots, length = 3, 3, 64, 64, 250
    kc, vc = torch.randn(slots, kv, length, dim), torch.randn(slots, kv, length, dim)
    q = torch.randn(slots, kv, group, dim)
    mask = torch.ones(slots, 1, 1, length, dtype=torch.bool)
    bias = torch.zeros(slots, 1, 1, length)

    def decode_matmul() -> torch.Tensor:
        s = torch.matmul(q, kc.transpose(-1, -2)) + bias
        return torch.matmul(torch.softmax(s, -1), vc)

    fused = per_call(lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask))
    mm = per_call(decode_matmul)
    rows = [["decode attention, 64 seqs x 250 positions", f"{fused * 1e6:.0f} us",
             f"{mm * 1e6:.0f} us", f"{fused / mm:.2f}x"]]
    n = 200
    qp = torch.randn(1, kv * group, n, dim)
    kp, vp = torch.randn(1, kv, n, dim), torch.randn(1, kv, n, dim)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    pbias = torch.zeros(n, n).masked_fill(~allowed, float("-inf")).repeat(group, 1)
    qg = torch.randn(kv, group * n, dim)

    def prefill_matmul() -> torch.Tensor:
        s = torch.matmul(qg, kp[0].transpose(-1, -2)) + pbias
        return torch.matmul(torch.softmax(s, -1), vp[0])

    fused = per_call(lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True,
                                                            enable_gqa=True))
    mm = per_call(prefill_matmul)
    rows.append([f"prompt attention, {n} tokens, nothing cached",
                 f"{fused * 1e6:.0f} us", f"{mm * 1e6:.0f} us (matmuls)", f"{fused / mm:.2f}x"])
    # after a cached prefix of 35 tokens the fused kernel needs an explicit mask
    start = 35
    kc2, vc2 = torch.randn(1, kv, start + n, dim), torch.randn(1, kv, start + n, dim)
    allowed2 = torch.arange(start + n)[None, :] <= torch.arange(n)[:, None] + start
    bias2 = torch.zeros(n, start + n).masked_fill(~allowed2, float("-inf")).repeat(group, 1)

    def prefill_matmul_prefix() -> torch.Tensor:
        s = torch.matmul(qg, kc2[0].transpose(-1, -2)) + bias2
        return torch.matmul(torch.softmax(s, -1), vc2[0])

    fused = per_call(lambda: F.scaled_dot_product_attention(qp, kc2, vc2, attn_mask=allowed2,
                                                            enable_gqa=True))
    mm = per_call(prefill_matmul_prefix)
    rows.append([f"prompt attention, {n} tokens after a cached 35-token prefix",
                 f"{fused * 1e6:.0f} us", f"{mm * 1e6:.0f} us", f"{fused / mm:.2f}x"])
    return rows


def decode_cache_rows() -> list[list[str]]:
    """llmq's decode attention (llmq/engine/model/decoder.py, kernels/native.py) as a step runs
    it: every layer's cache once in turn (30 layers, 64 slots x 260 of 512 positions), so reads come
    from memory, not from a cache warmed by the previous call."""
    from llmq.engine.kernels import native
    from llmq.engine.model.attention import compiled_decode_attention, decode_attention

    layers, slots, kv, group, dim, length, used = 30, 64, 3, 3, 64, 512, 260
    q = torch.randn(slots, kv, group, dim) * dim ** -0.5
    bias = torch.zeros(slots, 1, 1, used)
    rows, lengths = torch.arange(slots), torch.full((slots,), used)

    def per_layer(form: Callable[..., torch.Tensor], cache: torch.Tensor) -> float:
        def step() -> None:
            for layer in range(layers):
                form(q, cache[layer, 0, :, :, :used], cache[layer, 1, :, :, :used], bias)
        return per_call(step, repeat=3) / layers

    def native_per_layer(cache: torch.Tensor) -> float:
        def step() -> None:
            for layer in range(layers):
                native.decode_attention(q, cache[layer, 0], cache[layer, 1], rows, lengths)
        return per_call(step, repeat=3) / layers

    timings = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cache = torch.randn(layers, 2, slots, kv, length, dim).to(dtype)
        timings[dtype] = (per_layer(decode_attention, cache),
                          per_layer(compiled_decode_attention(), cache),
                          native_per_layer(cache))
    base = timings[torch.float32][0]
    return [[str(dtype).removeprefix("torch."), f"{eager * 1e6:.0f} us",
             f"{fused * 1e6:.0f} us", f"{own * 1e6:.0f} us", f"{fused / own:.2f}x",
             f"{base / own:.2f}x"]
            for dtype, (eager, fused, own) in timings.items()]


def prompt_attention_rows() -> list[list[str]]:
    """A prompt's causal attention in one layer, nothing cached before it: PyTorch's flash
    kernel on the step's own keys (what engines ran until the native path took prompt rows)
    against llmq's native kernel, one row per prompt position over the slot's cache."""
    from llmq.engine.kernels import native

    kv, group, dim, length = 3, 3, 64, 512
    rows = []
    for dtype in (torch.float32, torch.float16):
        for n in (64, 200, 400):
            q, k, v = torch.randn(n, kv * group, dim), torch.randn(n, kv, dim), \
                torch.randn(n, kv, dim)
            cache_k, cache_v = torch.zeros(2, kv, length, dim, dtype=dtype), \
                torch.zeros(2, kv, length, dim, dtype=dtype)
            cache_k[1, :, :n], cache_v[1, :, :n] = k.transpose(0, 1), v.transpose(0, 1)
            qs, ks, vs = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            qd = (q.view(n, kv, group, dim) * dim ** -0.5).contiguous()
            slots, lengths = torch.ones(n, dtype=torch.long), torch.arange(1, n + 1)
            flash = per_call(lambda qs=qs, ks=ks, vs=vs: F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, enable_gqa=True))
            own = per_call(lambda qd=qd, ck=cache_k, cv=cache_v, s=slots, ln=lengths:
                           native.decode_attention(qd, ck, cv, s, ln))
            rows.append([f"{n} tokens, {str(dtype).removeprefix('torch.')} cache",
                         f"{flash * 1e6:.0f} us", f"{own * 1e6:.0f} us", f"{flash / own:.2f}x"])
    return rows


def main() -> None:
    torch.set_num_threads(2)
    table = markdown_table(["kernel", "PyTorch default", "alternative", "speed-up"],
                           gemm_rows() + attention_rows())
    low = markdown_table(["GEMM (G(FL)OP/s)", "fp32 oneDNN packed", "bf16 oneDNN packed",
                          "int8 torch._int_mm alone", "int8 with per-token quantize (eager)",
                          "int4 weight-only", "int8 weight-only (_weight_int8pack_mm)"],
                         low_precision_rows())
    decode = markdown_table(["decode attention per layer, cache dtype", "eager matmuls",
                             "inductor", "native (llmq on CPU)", "native vs inductor",
                             "native vs eager float32"], decode_cache_rows())
    prompt = markdown_table(["prompt attention per layer", "flash (PyTorch)",
                             "native rows (llmq on CPU)", "speed-up"], prompt_attention_rows())
    print(table)
    print(low)
    print(decode)
    print(prompt)
    record("Kernels (bench/kernels.py)",
           table + "\n\n" + low + "\n\n" + decode + "\n\n" + prompt,
           "GEMM: F.linear (MKL) vs oneDNN on a weight packed once. Attention: fused "
           "scaled_dot_product_attention vs explicit matmuls with the G query heads of a KV "
           "head stacked as rows. Low precision: the kernels of llmq's quantized linears "
           "(llmq/engine/kernels/quantized.py). Middle of 3 timings of 30 calls each. "
           "Decode attention: "
           "llmq's three forms of it over 30 layers' caches in turn, 64 slots x 260 positions; "
           "middle of 3 timings of 3 passes. Prompt attention: one prompt in one layer, "
           "nothing cached before it, middle of 3 timings of 30 calls.")


if __name__ == "__main__":
    main()
