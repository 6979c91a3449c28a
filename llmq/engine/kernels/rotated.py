"""Rotated int8 layers: per-token int8 activations lose most where a few channels dwarf the
rest, and rotating a layer's input by an orthogonal matrix spreads those channels over many.
``y = x W^T = (x D H)(W D H)^T`` for random signs D and a block-diagonal Hadamard matrix H
(blocks of 64), so the layer keeps its function and quantizes ``x D H`` instead of x.

D costs nothing at run time: it is folded into whatever produces x (the RMSNorm's weight for
the QKV and gate/up inputs, the up projection's rows for the down projection's input), and
``W D H`` is computed once, when the variant is built. H is applied to x at run time, as the
fast Walsh-Hadamard transform (csrc/hadamard.cpp; a matmul with H where no native kernel is
built). On SmolLM2 rotating the inputs of the QKV, gate/up and down projections cut the int8
recipe's held-out KL to about a third (bench/quant_rotation.py)."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from . import native
from .int8 import int8_kernel, onednn_int8_mm, quantize_rows
from .quantized import Int8Linear, int8_linear_any_rows

BLOCK = 64
ROTATED_LINEARS = ("wqkv", "w_gate", "w_up", "w_down")


@functools.cache
def hadamard(block: int = BLOCK) -> torch.Tensor:
    """The Sylvester Hadamard matrix of size ``block`` divided by its square root:
    orthogonal and symmetric."""
    h = torch.ones(1, 1)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / block ** 0.5


@torch.library.custom_op("llmq::hadamard_blocks", mutates_args=())
def hadamard_blocks(x: torch.Tensor) -> torch.Tensor:
    """``x [T, C]`` float32, C a multiple of 64: every block of 64 columns times H."""
    lib = native.hadamard_library() if x.device.type == "cpu" else None
    if lib is None:
        h = hadamard().to(x.device)
        return (x.reshape(-1, BLOCK) @ h).view_as(x)
    x = x.contiguous()
    out = torch.empty_like(x)
    lib.llmq_hadamard64(x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], x.stride(0),
                        out.stride(0), torch.get_num_threads())
    return out


@hadamard_blocks.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("llmq::hadamard_quantize", mutates_args=())
def hadamard_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(hadamard_blocks(x))`` for CPU float32 ``x [T, C]``, in one pass where
    the native kernel is built: int8 ``[T, C]`` and scales ``[T, 1]``."""
    lib = native.hadamard_library()
    if lib is None:
        return quantize_rows(hadamard_blocks(x))
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(x.shape[0], 1)
    lib.llmq_hadamard64_quantize(x.data_ptr(), q.data_ptr(), scale.data_ptr(), x.shape[0],
                                 x.shape[1], x.stride(0), torch.get_num_threads())
    return q, scale


@hadamard_quantize.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[0], 1)


# The fused producers are registered through torch.library.Library rather than custom_op: a
# decode step calls them twice a layer, and custom_op's Python dispatch costs more than the
# kernel itself at a decode step's size.
_FUSED = torch.library.Library("llmq", "FRAGMENT")
_FUSED.define("rms_norm_hadamard_quantize(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)")
_FUSED.define("swiglu_hadamard_quantize(Tensor gate, Tensor up, Tensor gate_scale, "
              "Tensor up_scale, Tensor row_scale) -> (Tensor, Tensor)")


def _rms_norm_hadamard_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(hadamard_blocks(rms_norm(x) * weight))`` for float32 ``x [T, D]``."""
    lib = native.hadamard_library()
    if lib is None:
        return quantize_rows(hadamard_blocks(F.rms_norm(x, (x.shape[1],), weight, eps)))
    x, weight = x.contiguous(), weight.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(x.shape[0], 1)
    lib.llmq_rms_norm_hadamard64_quantize(x.data_ptr(), weight.data_ptr(), eps, q.data_ptr(),
                                          scale.data_ptr(), x.shape[0], x.shape[1],
                                          x.shape[1], torch.get_num_threads())
    return q, scale


def _swiglu_hadamard_quantize(gate: torch.Tensor, up: torch.Tensor, gate_scale: torch.Tensor,
                              up_scale: torch.Tensor, row_scale: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(hadamard_blocks(silu(g) * u))`` where g and u are the int32 products
    ``gate`` and ``up [T, F]`` times their weights' scales ``[F]`` and the rows' ``[T, 1]``."""
    lib = native.hadamard_library()
    if lib is None:
        g = gate.float() * gate_scale * row_scale
        return quantize_rows(hadamard_blocks(F.silu(g) * (up.float() * up_scale * row_scale)))
    gate, up, row_scale = gate.contiguous(), up.contiguous(), row_scale.contiguous()
    q = torch.empty(gate.shape, dtype=torch.int8)
    scale = torch.empty(gate.shape[0], 1)
    lib.llmq_swiglu_hadamard64_quantize(gate.data_ptr(), up.data_ptr(), gate_scale.data_ptr(),
                                        up_scale.data_ptr(), row_scale.data_ptr(), q.data_ptr(),
                                        scale.data_ptr(), gate.shape[0], gate.shape[1],
                                        torch.get_num_threads())
    return q, scale


def _quantized_like(x: torch.Tensor, *_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=torch.int8, device=x.device), x.new_empty(
        x.shape[0], 1, dtype=torch.float32)


_FUSED.impl("rms_norm_hadamard_quantize", _rms_norm_hadamard_quantize, "CPU")
_FUSED.impl("swiglu_hadamard_quantize", _swiglu_hadamard_quantize, "CPU")
torch.library.register_fake("llmq::rms_norm_hadamard_quantize", _quantized_like, lib=_FUSED)
torch.library.register_fake("llmq::swiglu_hadamard_quantize", _quantized_like, lib=_FUSED)


class RotatedInt8Linear(Int8Linear):
    """An int8 layer whose weight is ``W D H`` and whose input is rotated by H here (D was
    folded into the input's producer when the variant was built)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        if rows.device.type == "cpu" and int8_kernel() == "onednn":
            # the rotation and the quantization in one pass: the rotated floats never land
            xq, x_scale = hadamard_quantize(rows)
            out = onednn_int8_mm(xq, x_scale, self.qweight, self.scale)
        else:
            out = int8_linear_any_rows(hadamard_blocks(rows), self.qweight, self.scale)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", input rotated in blocks of {BLOCK}"


def fuses_here() -> bool:
    """Whether rotated layers on this CPU run rotated_qkv and rotated_ffn: the native kernel
    builds and oneDNN's int8 GEMM is the one chosen."""
    return int8_kernel() == "onednn" and native.hadamard_library() is not None


def unfused_here(model: torch.nn.Module) -> str | None:
    """A warning when a CPU model's rotated layers cannot run fused here (a variant built
    where they did), so each rotates its own input in a pass of its own; None otherwise."""
    rotated = any(type(m) is RotatedInt8Linear and m.qweight.device.type == "cpu"
                  for m in model.modules())
    if not rotated or fuses_here():
        return None
    why = ("FBGEMM's int8 GEMM runs here" if int8_kernel() == "fbgemm" else
           "llmq's native kernels are off (LLMQ_COMPILE=0) or do not build here")
    return (f"its rotated int8 layers run unfused ({why}): an extra pass over every rotated "
            "input; `llmq model optimize --preset cpu` here builds what is fastest here")


def fuses_producers(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` (a DecoderLayer on CPU) runs rotated_qkv and rotated_ffn: every
    rotated linear is one, and ``fuses_here``. Elsewhere its RotatedInt8Linears rotate their
    own inputs."""
    return (all(type(getattr(layer, name)) is RotatedInt8Linear for name in ROTATED_LINEARS)
            and fuses_here())


def rotated_qkv(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """``layer.wqkv(rms_norm(x))`` with the norm, rotation and quantization in one pass."""
    xq, x_scale = torch.ops.llmq.rms_norm_hadamard_quantize(x, layer.attn_norm,
                                                           layer.config.rms_norm_eps)
    return onednn_int8_mm(xq, x_scale, layer.wqkv.qweight, layer.wqkv.scale)


def rotated_ffn(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The SwiGLU FFN of ``x`` (before its norm) in three int8 GEMMs: gate and up share one
    rotated and quantized input, and the SwiGLU of their int32 outputs is rotated and
    quantized for the down projection in the same pass."""
    gate, up, down = layer.w_gate, layer.w_up, layer.w_down
    xq, x_scale = torch.ops.llmq.rms_norm_hadamard_quantize(x, layer.ffn_norm,
                                                           layer.config.rms_norm_eps)
    aq, a_scale = torch.ops.llmq.swiglu_hadamard_quantize(
        torch._int_mm(xq, gate.qweight.t()), torch._int_mm(xq, up.qweight.t()), gate.scale,
        up.scale, x_scale)
    return onednn_int8_mm(aq, a_scale, down.qweight, down.scale)


def rotatable(config: ModelConfig) -> bool:
    return config.hidden_size % BLOCK == 0 and config.intermediate_size % BLOCK == 0


def check_rotatable(config: ModelConfig) -> None:
    if not rotatable(config):
        raise ValueError(f"rotation works in blocks of {BLOCK} channels: hidden size "
                         f"{config.hidden_size} and FFN size {config.intermediate_size} must be "
                         "multiples of it")


def rotate_weights(config: ModelConfig, weights: dict[str, torch.Tensor], seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights for rotated layers (same function in float): the signs
    folded into the producers, the rotated linears' weights times D H."""
    check_rotatable(config)
    g = torch.Generator().manual_seed(seed)
    w = {k: v.float().clone() if ".layers." in k else v for k, v in weights.items()}

    def signs(n: int) -> torch.Tensor:
        return (torch.randint(0, 2, (n,), generator=g) * 2 - 1).float()

    def rotated(weight: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        cols = weight * d  # W D
        return (cols.reshape(-1, BLOCK) @ hadamard()).view_as(cols)

    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        d = signs(config.hidden_size)
        w[p + "input_layernorm.weight"] = w[p + "input_layernorm.weight"] * d
        for n in "qkv":
            w[p + f"self_attn.{n}_proj.weight"] = rotated(w[p + f"self_attn.{n}_proj.weight"], d)
        d = signs(config.hidden_size)
        w[p + "post_attention_layernorm.weight"] = w[p + "post_attention_layernorm.weight"] * d
        for n in ("gate", "up"):
            w[p + f"mlp.{n}_proj.weight"] = rotated(w[p + f"mlp.{n}_proj.weight"], d)
        d = signs(config.intermediate_size)
        w[p + "mlp.up_proj.weight"] = w[p + "mlp.up_proj.weight"] * d[:, None]
        w[p + "mlp.down_proj.weight"] = rotated(w[p + "mlp.down_proj.weight"], d)
    return w


def rotate_layers(model: torch.nn.Module) -> None:
    """Makes the int8 layers of ROTATED_LINEARS rotate their input (their weights must come
    from ``rotate_weights``); in place."""
    for layer in model.layers:  # type: ignore[union-attr]
        for name in ROTATED_LINEARS:
            old = getattr(layer, name)
            if type(old) is not Int8Linear:
                raise ValueError(f"only int8 layers rotate their input, not {name}: {old}")
            new = RotatedInt8Linear(old.in_features, old.out_features)
            new.qweight, new.scale = old.qweight, old.scale
            setattr(layer, name, new)
