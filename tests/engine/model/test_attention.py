"""Attention over a KV cache stored in half precision: decode attention in its eager, its
inductor and its native (llmq's C++) form against a float64 reference, with stale and huge
values in the positions a slot must not see, and a model whose cache is float16 against the
same model in float32."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from llmq.contract import SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.kernels import native
from llmq.engine.model.attention import compiled_decode_attention, decode_attention
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.kv_cache import from_cache, to_cache
from llmq.engine.runner import ModelRunner
from tests.conftest import Tiny
from tests.engine.tiny import HAS_COMPILER, chunked_logits, native_kernels


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
    """Slot by slot, over its own positions only, in float64."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for s, n in enumerate(lengths.tolist()):
        k = from_cache(keys[s, :, :n], torch.float64)  # [K, n, E]
        v = from_cache(values[s, :, :n], torch.float64)
        probs = torch.softmax(q[s].double() @ k.transpose(-1, -2), dim=-1)  # [K, G, n]
        out[s] = probs @ v
    return out


def as_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x [..., E]`` stored as a cache of ``dtype`` stores it: ``[..., R]``."""
    rows = to_cache(x.reshape(-1, x.shape[-1]), dtype)
    return rows.view(*x.shape[:-1], rows.shape[-1])


def prompt_rows_case(dim: int, group: int, dtype: torch.dtype, g: torch.Generator
                     ) -> tuple[torch.Tensor, ...]:
    """Rows as a step of prompts and decodes packs them: a prompt of 37 rows (tiles of 16,
    16 and 5 positions), a decode row, a chunk of 20 rows after 8 cached positions and a row
    of the same slot that does not follow it; and the float64 answer, row by row. Past the
    longest row of each slot lie stale, huge keys and values."""
    kv_heads, length = 2, 64
    slots = torch.tensor([0] * 37 + [2] + [1] * 20 + [1])
    lengths = torch.cat([torch.arange(1, 38), torch.tensor([50]), torch.arange(9, 29),
                         torch.tensor([40])])
    q = torch.randn(len(slots), kv_heads, group, dim, generator=g) * dim ** -0.5
    keys = torch.randn(3, kv_heads, length, dim, generator=g)
    values = torch.randn(3, kv_heads, length, dim, generator=g)
    for slot, seen in enumerate((37, 40, 50)):
        keys[slot, :, seen:], values[slot, :, seen:] = 1e6, -1e6
    keys, values = as_cache(keys, dtype), as_cache(values, dtype)
    want = torch.empty(q.shape, dtype=torch.float64)
    for row, (slot, n) in enumerate(zip(slots.tolist(), lengths.tolist(), strict=True)):
        k = from_cache(keys[slot, :, :n], torch.float64)
        v = from_cache(values[slot, :, :n], torch.float64)
        want[row] = torch.softmax(q[row].double() @ k.transpose(-1, -2), dim=-1) @ v
    return q, keys, values, slots, lengths, want


# floats whose conversion to a 16-bit cache is easy to get wrong: saturation, float16's
# subnormals and its underflow, and ties that round to even in float16 and in bfloat16
AWKWARD = [1e6, -1e6, 7e4, -7e4, 65519.0, 65520.0, -65504.5, 1e-6, -3e-8, 6e-8, 2.9e-8,
           1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, -(1 + 3 * 2 ** -8), 0.0, -0.0]


def written_case(dim: int, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                 lengths: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A step's own keys and values for rows (``slots``, ``lengths``) of caches like ``keys``
    and ``values``, each row written at its last position, with AWKWARD among them; their rows
    in the caches viewed as ``[S * K * L, E]``; and the caches as ``index_copy_`` of
    ``to_cache`` leaves them."""
    _, kv_heads, length, width = keys.shape
    k_new = torch.randn(len(slots) * kv_heads, dim, generator=g)
    v_new = torch.randn(len(slots) * kv_heads, dim, generator=g)
    k_new.view(-1)[: len(AWKWARD)] = torch.tensor(AWKWARD)
    v_new.view(-1)[-len(AWKWARD):] = torch.tensor(AWKWARD)
    cache_rows = ((slots[:, None] * kv_heads + torch.arange(kv_heads)) * length
                  + (lengths - 1)[:, None]).reshape(-1)
    want_k, want_v = keys.clone(), values.clone()
    want_k.view(-1, width).index_copy_(0, cache_rows, to_cache(k_new, keys.dtype))
    want_v.view(-1, width).index_copy_(0, cache_rows, to_cache(v_new, values.dtype))
    return k_new, v_new, cache_rows, want_k, want_v


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    ints = {4: torch.int32, 2: torch.int16, 1: torch.int8}[got.element_size()]
    assert got.dtype == want.dtype
    assert torch.equal(got.view(ints), want.view(ints))


def test_a_float16_cache_saturates_rather_than_overflows() -> None:
    stored = to_cache(torch.tensor([1e6, -1e6, 3.0]), torch.float16)
    assert stored.tolist() == [65504.0, -65504.0, 3.0]
    assert to_cache(torch.tensor([1e6]), torch.bfloat16).item() == pytest.approx(1e6, rel=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_attention_reads_only_each_slots_own_positions(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    slots, kv_heads, group, dim, length = 5, 2, 3, 16, 24
    q = torch.randn(slots, kv_heads, group, dim, generator=g) * dim ** -0.5
    keys = torch.randn(slots, kv_heads, length, dim, generator=g)
    values = torch.randn(slots, kv_heads, length, dim, generator=g)
    lengths = torch.tensor([1, 7, 24, 13, 2])
    hidden = torch.arange(length)[None, :] >= lengths[:, None]  # [S, L]: what earlier
    keys[hidden[:, None, :, None].expand_as(keys)] = 1e6  # sequences left in the slots
    values[hidden[:, None, :, None].expand_as(values)] = -1e6
    k_cache, v_cache = to_cache(keys, dtype), to_cache(values, dtype)
    bias = torch.zeros(slots, 1, 1, length).masked_fill_(
        hidden.view(slots, 1, 1, length), float("-inf"))
    want = reference(q, k_cache, v_cache, lengths)  # the cache's rounding, exact sums
    forms = [decode_attention] + ([compiled_decode_attention] if HAS_COMPILER else [])
    for form in forms:
        got = form(q, k_cache, v_cache, bias)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    if HAS_COMPILER:  # the native kernel takes each row's slot and length instead of a mask
        with native_kernels():
            got = native.decode_attention(q, k_cache, v_cache, torch.arange(slots), lengths)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
            # rows for some slots only, in any order, each over its own length
            rows = torch.tensor([3, 0, 2])
            got = native.decode_attention(q[rows], k_cache, v_cache, rows, lengths[rows])
            torch.testing.assert_close(got.double(), want[rows], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_native_attention_takes_prompt_rows_a_tile_at_a_time(dtype: torch.dtype) -> None:
    """Consecutive positions of one slot go through the kernel as tiles of 16 rows that share
    what they read, each row seeing up to its own position only."""
    q, keys, values, slots, lengths, want = prompt_rows_case(
        64, 3, dtype, torch.Generator().manual_seed(2))
    with native_kernels():
        got = native.decode_attention(q, keys, values, slots, lengths)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def ring_window_case(dim: int, group: int, dtype: torch.dtype, g: torch.Generator
                     ) -> tuple[torch.Tensor, ...]:
    """A windowed layer's ring of 40 positions (position p at p % 40), each row seeing its
    last 16: a chunk of 20 prompt rows whose window starts mid-ring, decode rows whose window
    wraps round the ring's end, and a row shorter than its window; and the float64 answer
    over each row's window of positions."""
    kv_heads, ring, window = 2, 40, 16
    written = [80, 90, 5]  # positions each slot has written, the ring keeping the last 40
    logical = torch.randn(3, kv_heads, 90, 2, dim, generator=g)  # keys and values by position
    keys = torch.full((3, kv_heads, ring, dim), 1e6)  # what no row may see
    values = torch.full((3, kv_heads, ring, dim), -1e6)
    for slot, n in enumerate(written):
        for p in range(n):
            keys[slot, :, p % ring] = logical[slot, :, p, 0]
            values[slot, :, p % ring] = logical[slot, :, p, 1]
    slots = torch.tensor([0] * 20 + [1, 1, 2])
    lengths = torch.cat([torch.arange(61, 81), torch.tensor([90, 83, 5])])
    q = torch.randn(len(slots), kv_heads, group, dim, generator=g) * dim ** -0.5
    stored = [(from_cache(as_cache(logical[slot, :, :, 0], dtype), torch.float64),
               from_cache(as_cache(logical[slot, :, :, 1], dtype), torch.float64))
              for slot in range(3)]
    want = torch.empty(q.shape, dtype=torch.float64)
    for row, (slot, n) in enumerate(zip(slots.tolist(), lengths.tolist(), strict=True)):
        k, v = (x[:, max(0, n - window):n] for x in stored[slot])
        want[row] = torch.softmax(q[row].double() @ k.transpose(-1, -2), dim=-1) @ v
    return q, as_cache(keys, dtype), as_cache(values, dtype), slots, lengths, want


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
def test_native_attention_sees_only_a_window_of_a_ring(dtype: torch.dtype) -> None:
    q, keys, values, slots, lengths, want = ring_window_case(
        64, 3, dtype, torch.Generator().manual_seed(4))
    with native_kernels():
        got = native.decode_attention(q, keys, values, slots, lengths, window=16)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_native_attention_writes_the_steps_keys_then_attends(dtype: torch.dtype) -> None:
    """The engine hands the kernel the step's own keys and values and an unscaled q: it
    writes them bit for bit as ``to_cache`` and ``index_copy_`` would, and every row, prompt
    rows included, then attends over what was written."""
    g = torch.Generator().manual_seed(3)
    q, keys, values, slots, lengths, _ = prompt_rows_case(64, 3, dtype, g)
    k_new, v_new, cache_rows, want_k, want_v = written_case(64, keys, values, slots, lengths, g)
    k_new.view(-1)[: len(AWKWARD)] = 0.5  # huge keys would make the reference's softmax moot
    want_k.view(-1, keys.shape[-1]).index_copy_(0, cache_rows, to_cache(k_new, dtype))
    scale = 64 ** -0.5
    with native_kernels():
        got = native.decode_attention(q / scale, keys, values, slots, lengths, scale,
                                      (k_new, v_new, cache_rows))
    assert_same_bits(keys, want_k)
    assert_same_bits(values, want_v)
    want = torch.empty(q.shape, dtype=torch.float64)
    for row, (slot, n) in enumerate(zip(slots.tolist(), lengths.tolist(), strict=True)):
        k = from_cache(want_k[slot, :, :n], torch.float64)
        v = from_cache(want_v[slot, :, :n], torch.float64)
        want[row] = torch.softmax(q[row].double() @ k.transpose(-1, -2), dim=-1) @ v
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kv", "tolerance"), [("float16", 2e-3), ("int8", 2e-2)])
def test_a_half_or_int8_cache_keeps_the_models_logits(tiny: Tiny, kv: str,
                                                      tolerance: float) -> None:
    exact = LlamaModel.from_hf_weights(tiny.config, tiny.weights)
    small = LlamaModel.from_hf_weights(replace(tiny.config, kv_cache_dtype=kv), tiny.weights)
    assert ModelRunner(small, 1, 8).cache.dtype == getattr(torch, kv)
    tokens = tiny.tokenizer.encode("Summarize in two sentences: the mountain is tall and "
                                   "the valley below it is deep and green.")
    want = chunked_logits(exact, tokens, len(tokens))  # one prefill: no cache read at all
    got = chunked_logits(small, tokens, 3)  # every later chunk reads the stored keys, values
    assert not torch.equal(got, want)  # the cache really was read, in its dtype
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance * float(want.abs().max()))
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
def test_the_native_kernel_decodes_what_the_eager_path_decodes(tiny: Tiny) -> None:
    """Workers decode through the native kernel (choose_paths); on a float model it must give
    the eager path's greedy tokens, with sequences of different lengths in one batch."""
    def generate(model: LlamaModel) -> list[list[int]]:
        engine = Engine(model, tiny.tokenizer, EngineConfig(slots=3, slot_length=96))
        params = SamplingParams(max_tokens=16, ignore_eos=True)
        prompts = ["Once upon a time", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "Hello"]
        try:
            return [r.token_ids for r in engine.generate(
                GenerationRequest(prompt=p, params=params) for p in prompts)]
        finally:
            engine.close()  # its loop thread must not outlive the test

    for kv in ("float32", "float16", "int8"):
        model = LlamaModel.from_hf_weights(replace(tiny.config, kv_cache_dtype=kv),
                                           tiny.weights)
        eager = generate(model)
        assert not model.choose_paths().native_attention  # the tests' set-up: native off
        with native_kernels():
            assert model.choose_paths().native_attention
            assert generate(model) == eager  # the native argmax too


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
def test_the_native_kernel_attends_prompt_rows_as_the_eager_path(tiny: Tiny) -> None:
    """With the native kernel, a step's prompt rows go through it with its decode rows, each
    row seeing its slot up to its own position: a prompt prefilled whole, and in chunks that
    read the part cached before them, must give the eager path's logits."""
    model = LlamaModel.from_hf_weights(tiny.config, tiny.weights)  # a float32 cache: exact
    tokens = tiny.tokenizer.encode("Summarize in two sentences: the mountain is tall and "
                                   "the valley below it is deep and green.")
    want = [chunked_logits(model, tokens, chunk) for chunk in (len(tokens), 5)]
    with native_kernels():
        assert model.choose_paths().native_attention
        got = [chunked_logits(model, tokens, chunk) for chunk in (len(tokens), 5)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))
