"""Rotated int8 layers (llmq/engine/kernels/rotated.py): the Hadamard transform in every build of
the native kernel, weights rotated so that the model keeps its function, and rotated variants
that compile, save and load back to the same tokens."""

from __future__ import annotations

import ctypes
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmq.engine.compress.fidelity import sequence_logits
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.kernels import native
from llmq.engine.kernels.int8 import fbgemm_available, quantize_rows
from llmq.engine.kernels.quantized import quantize_layers
from llmq.engine.kernels.rotated import (
    ROTATED_LINEARS,
    RotatedInt8Linear,
    hadamard,
    hadamard_blocks,
    hadamard_quantize,
    rotate_layers,
    rotate_weights,
    unfused_here,
)
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.layer_halves import LayerPaths
from llmq.engine.model.tokenizer import TextTokenizer
from llmq.variants.optimize import Recipe, build, preset, resolve_rotation
from tests.engine.tiny import (
    HAS_COMPILER,
    forced_int8_kernel,
    native_kernels,
    random_weights,
    smollm2_tokenizer,
    tiny_config,
    write_gguf,
)
from tests.variants.test_optimize import PROMPTS, generate


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def rotatable_gguf(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer
                   ) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny model whose widths are whole blocks of 64 (the session's tiny one has 96)."""
    config = tiny_config(tokenizer, intermediate_size=128)
    weights = random_weights(config)
    return write_gguf(tmp_path_factory.mktemp("rot") / "tiny.gguf", config, weights), weights


def test_the_matrix_is_an_orthogonal_hadamard_matrix() -> None:
    h = hadamard()
    assert h.shape == (64, 64)
    assert set((h * 8).round().unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, torch.eye(64), rtol=0, atol=1e-6)


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
@pytest.mark.parametrize("march", ["native", "haswell", "x86-64"])
def test_every_build_of_the_kernel_computes_the_blocks_times_the_matrix(
        march: str, tmp_path: Path) -> None:
    """Workers build with -march=native: AVX-512 here, AVX2 or plain C++ elsewhere; all three
    run on this CPU, on a strided input, and must give x times H block by block."""
    lib = build_for(march, tmp_path)
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(7, 256, generator=g)
    x = wide[:, :192]  # rows 256 apart, 3 blocks each
    out = torch.full((7, 192), float("nan"))
    assert lib.llmq_hadamard64(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(7),
        ctypes.c_int64(192), ctypes.c_int64(256), ctypes.c_int64(192), 2) == 0
    want = (x.reshape(-1, 64).double() @ hadamard().double()).view(7, 192)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    q, scale = torch.empty(7, 192, dtype=torch.int8), torch.empty(7, 1)
    assert lib.llmq_hadamard64_quantize(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(q.data_ptr()),
        ctypes.c_void_p(scale.data_ptr()), ctypes.c_int64(7), ctypes.c_int64(192),
        ctypes.c_int64(256), 2) == 0
    want_q, want_scale = quantize_rows(want.float())
    torch.testing.assert_close(scale, want_scale, rtol=1e-5, atol=0)
    assert (q.int() - want_q.int()).abs().max() <= 1  # a rounding tie may fall either way
    assert (q == want_q).float().mean() > 0.99
    assert lib.llmq_hadamard64(  # a width that is not whole blocks is refused
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(7),
        ctypes.c_int64(100), ctypes.c_int64(256), ctypes.c_int64(192), 2) == 1


def build_for(march: str, folder: Path) -> ctypes.CDLL:
    flags = [f if f != "-march=native" else f"-march={march}" for f in native.FLAGS]
    out_file = folder / "hadamard.so"
    subprocess.run([str(native.compiler()), *flags, "-o", str(out_file),
                    str(native.CSRC / "hadamard.cpp")], check=True)
    return ctypes.CDLL(str(out_file))


def assert_same_codes(got: tuple[torch.Tensor, torch.Tensor],
                      want: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=0)
    assert (got[0].int() - want[0].int()).abs().max() <= 1  # a rounding tie may fall either way
    assert (got[0] == want[0]).float().mean() > 0.99


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
@pytest.mark.parametrize("march", ["native", "haswell", "x86-64"])
def test_every_build_fuses_the_norm_and_the_swiglu_with_the_rotation(
        march: str, tmp_path: Path) -> None:
    """The fused producers of rotated inputs against PyTorch's form of the same maths (RMSNorm
    or SiLU x up of the dequantized int32 products, H, per-row int8), both signs of the gate
    and gates past exp's range included."""
    lib = build_for(march, tmp_path)
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(9, 192, generator=g) * 4, torch.rand(192, generator=g) + 0.5
    q, scale = torch.empty(9, 192, dtype=torch.int8), torch.empty(9, 1)
    assert lib.llmq_rms_norm_hadamard64_quantize(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(weight.data_ptr()), ctypes.c_float(1e-5),
        ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(scale.data_ptr()), ctypes.c_int64(9),
        ctypes.c_int64(192), ctypes.c_int64(192), 2) == 0
    assert_same_codes((q, scale), quantize_rows(hadamard_blocks(
        F.rms_norm(x, (192,), weight, 1e-5))))
    gate, up = (torch.randint(-2**20, 2**20, (9, 128), generator=g, dtype=torch.int32)
                for _ in range(2))
    gate_scale, up_scale = torch.rand(128, generator=g) * 1e-4, torch.rand(128, generator=g) * 1e-5
    row_scale = torch.rand(9, 1, generator=g) + 0.5  # gates up to ~150 in magnitude
    q, scale = torch.empty(9, 128, dtype=torch.int8), torch.empty(9, 1)
    assert lib.llmq_swiglu_hadamard64_quantize(
        *(ctypes.c_void_p(t.data_ptr()) for t in (gate, up, gate_scale, up_scale, row_scale, q,
                                                   scale)), ctypes.c_int64(9), ctypes.c_int64(128),
        2) == 0
    act = F.silu(gate * gate_scale * row_scale) * (up * up_scale * row_scale)
    assert_same_codes((q, scale), quantize_rows(hadamard_blocks(act)))


@pytest.mark.skipif(not HAS_COMPILER, reason="the native kernel is built with a C++ compiler")
def test_the_native_op_and_pytorchs_form_agree() -> None:
    x = torch.randn(33, 128, generator=torch.Generator().manual_seed(1))
    eager = hadamard_blocks(x)  # the tests' process: native kernels off
    with native_kernels():
        assert native.hadamard_library() is not None
        torch.testing.assert_close(hadamard_blocks(x), eager, rtol=1e-5, atol=1e-5)
        q, scale = hadamard_quantize(x)
    want_q, want_scale = hadamard_quantize(x)  # PyTorch's form: quantize_rows of the rotation
    torch.testing.assert_close(want_q, quantize_rows(eager)[0], rtol=0, atol=0)
    torch.testing.assert_close(scale, want_scale, rtol=1e-5, atol=0)
    assert (q.int() - want_q.int()).abs().max() <= 1
    torch.testing.assert_close(hadamard_blocks(hadamard_blocks(x)), x, rtol=1e-5, atol=1e-5)


class RotatedFloat(nn.Module):
    """A float linear layer that rotates its input as RotatedInt8Linear does."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(hadamard_blocks(x.contiguous()))


def test_rotated_weights_keep_the_function(rotatable_gguf: tuple[Path, dict],
                                           tokenizer: TextTokenizer) -> None:
    _, weights = rotatable_gguf
    config = tiny_config(tokenizer, intermediate_size=128)
    base = LlamaModel.from_hf_weights(config, weights)
    rotated = LlamaModel.from_hf_weights(config, rotate_weights(config, weights))
    tokens = tokenizer.encode(PROMPTS[1])
    unrotated_inputs = sequence_logits(rotated, tokens)  # the signs alone change the function
    assert not torch.allclose(unrotated_inputs, sequence_logits(base, tokens), atol=1e-2)
    for layer in rotated.layers:
        for name in ROTATED_LINEARS:
            setattr(layer, name, RotatedFloat(getattr(layer, name)))
    torch.testing.assert_close(sequence_logits(rotated, tokens), sequence_logits(base, tokens),
                               rtol=1e-4, atol=1e-4)


def test_rotation_is_refused_where_it_cannot_apply(tiny: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 layers, not to bf16"):
        Recipe(quantize="bf16", rotate=True).validate()
    with pytest.raises(ValueError, match="a rotated layer must be int8"):
        Recipe(quantize="int8", rotate=True, keep_float=("3.w_down",)).validate()
    with pytest.raises(ValueError, match="multiples of it"):  # the session's tiny: FFN 96
        build(str(tiny.gguf), Recipe(quantize="int8", rotate=True), tmp_path / "v",  # type: ignore[attr-defined]
              log=lambda _: None)
    assert not (tmp_path / "v").exists()


def test_the_preset_rotates_int8_where_it_applies_and_fuses(tokenizer: TextTokenizer) -> None:
    """``rotate=None`` (the cpu preset's): rotated only for int8, on whole blocks of 64, with
    no rotated linear kept in float, and where oneDNN and the native kernel run the fused
    producers; each refusal says why. An explicit choice is left as it is."""
    assert preset("cpu").rotate is None
    config, odd = tiny_config(tokenizer, intermediate_size=128), tiny_config(tokenizer)
    auto = Recipe(quantize="int8", rotate=None)
    said: list[str] = []

    def rotates(recipe: Recipe, cfg: object = config) -> bool | None:
        return resolve_rotation(recipe, cfg, said.append).rotate  # type: ignore[arg-type]

    with forced_int8_kernel("onednn"):
        assert rotates(auto) is False  # the tests' process: native kernels off
        assert said.pop() == "rotated int8 inputs: no, the rotation does not fuse here"
        if HAS_COMPILER:
            with native_kernels():
                assert rotates(auto) is True
                assert said.pop() == "rotated int8 inputs: yes"
                assert rotates(auto, odd) is False
                assert "widths are not multiples of 64" in said.pop()
                assert rotates(Recipe(quantize="int8", rotate=None, keep_float=("2.w_up",))
                               ) is False
                assert "kept in float" in said.pop()
                assert rotates(Recipe(quantize="bf16", rotate=None)) is False
                assert rotates(Recipe(quantize="int8", rotate=False)) is False
                assert not said  # nothing to say where int8 is not the scheme or it is explicit
                with forced_int8_kernel("fbgemm"):
                    assert rotates(auto) is False
    assert rotates(Recipe(quantize="int8", rotate=True), odd) is True  # refused by build


def test_a_worker_warns_where_rotated_layers_cannot_fuse(rotatable_gguf: tuple[Path, dict],
                                                        tokenizer: TextTokenizer) -> None:
    _, weights = rotatable_gguf
    config = tiny_config(tokenizer, intermediate_size=128)
    plain = LlamaModel.from_hf_weights(config, weights)
    quantize_layers(plain, "int8")
    rotated = LlamaModel.from_hf_weights(config, rotate_weights(config, weights))
    quantize_layers(rotated, "int8")
    rotate_layers(rotated)
    with forced_int8_kernel("fbgemm"):
        assert "FBGEMM" in (unfused_here(rotated) or "")
        assert unfused_here(plain) is None
    with forced_int8_kernel("onednn"):
        assert "native kernels are off" in (unfused_here(rotated) or "")
        if HAS_COMPILER:
            with native_kernels():
                assert unfused_here(rotated) is None


def test_a_rotated_variant_compiles_saves_and_loads_to_the_same_tokens(
        rotatable_gguf: tuple[Path, dict], tmp_path: Path) -> None:
    gguf, _ = rotatable_gguf
    out = tmp_path / "variant"
    _, variant, tok, manifest = build(str(gguf), Recipe(quantize="int8", rotate=True), out,
                                      log=lambda _: None)
    assert manifest["recipe"]["rotate"] is True
    schemes = manifest["linears"]
    assert {schemes[f"layers.0.{n}"] for n in ROTATED_LINEARS} == {"int8-rotated"}
    assert schemes["layers.0.wo"] == "int8"
    config = EngineConfig(slots=4, slot_length=128)
    with Engine(variant, tok, config) as engine:
        eager = generate(engine)
    with Engine.load(out, config) as loaded:
        assert isinstance(loaded.model.layers[1].w_down, RotatedInt8Linear)
        assert generate(loaded) == eager
    if HAS_COMPILER:  # workers run the custom op, native, inside inductor's graphs
        tokens = tok.encode(PROMPTS[0])
        # each int8 GEMM this CPU has, whichever it would choose: the producers fuse under
        # oneDNN's and not under FBGEMM's (the AVX2-only CPUs' choice), and both keep the logits
        for kernel in ("onednn", "fbgemm") if fbgemm_available() else ("onednn",):
            with forced_int8_kernel(kernel):
                variant.paths = LayerPaths()  # eager
                before = sequence_logits(variant, tokens)
                with native_kernels():
                    paths = variant.choose_paths()
                    assert paths.halves is not None
                    assert isinstance(variant.layers[0].wqkv, RotatedInt8Linear)
                    assert paths.rotated_producers is (kernel == "onednn")
                    # prompt rows through the native attention read their keys rounded to the
                    # float16 cache, a difference of its own (test_attention.py): off, to
                    # compare the rest
                    variant.paths = replace(paths, native_attention=False)
                    torch.testing.assert_close(sequence_logits(variant, tokens), before,
                                               rtol=1e-3, atol=1e-3)
    data = json.loads((out / "llmq-manifest.json").read_text())
    assert data["recipe"]["rotate"] is True
