"""SmoothQuant: moves activation outliers into the weights before int8 quantization.

For a linear layer ``y = x W^T`` and a per-input-channel factor ``s``, ``y = (x / s)(W s)^T``
exactly. Choosing ``s_j = max|x_j|^a / max|W_j|^(1-a)`` evens out the channels that per-token
int8 would otherwise crush. The division by ``s`` is folded into whatever produces ``x``, so
it costs nothing at run time:
- QKV and gate/up inputs come from an RMSNorm: its weight is divided;
- the down projection's input is ``silu(gate) * up``: the up rows are divided;
- the output projection's input is attention over V: the V rows (and V's bias, Qwen2's) are
  divided, with one factor per (KV head, dim) shared by the query heads of the group."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .calibrate import CalibrationStats


def _factors(act_max: torch.Tensor, weight_cols_max: torch.Tensor,
             alpha: float) -> torch.Tensor:
    s = act_max.clamp_min(1e-5).pow(alpha) / weight_cols_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-2, 1e3)


def smooth(config: ModelConfig, weights: dict[str, torch.Tensor], stats: CalibrationStats,
           alpha: float) -> dict[str, torch.Tensor]:
    """Returns Hugging Face-named weights with the factors folded in (same function)."""
    c = config
    w = {k: v.float().clone() if ".layers." in k else v for k, v in weights.items()}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        ls = stats.layers[i]
        # QKV, fed by the attention RMSNorm
        qkv = [w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]
        s = _factors(ls.absmax["wqkv"], torch.cat(qkv).abs().amax(0), alpha)
        w[p + "input_layernorm.weight"] = w[p + "input_layernorm.weight"] / s
        for n, t in zip("qkv", qkv, strict=True):
            w[p + f"self_attn.{n}_proj.weight"] = t * s
        # gate/up, fed by the FFN RMSNorm
        gate, up = w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]
        s = _factors(ls.absmax["w_gate"], torch.cat([gate, up]).abs().amax(0), alpha)
        w[p + "post_attention_layernorm.weight"] = w[p + "post_attention_layernorm.weight"] / s
        w[p + "mlp.gate_proj.weight"] = gate * s
        up = up * s
        # down, fed by silu(gate) * up: divide the up rows
        down = w[p + "mlp.down_proj.weight"]
        s = _factors(ls.absmax["w_down"], down.abs().amax(0), alpha)
        w[p + "mlp.up_proj.weight"] = up / s[:, None]
        w[p + "mlp.down_proj.weight"] = down * s
        # output projection, fed by attention over V: one factor per (KV head, dim)
        o = w[p + "self_attn.o_proj.weight"]  # [D, H * E]
        act = ls.absmax["wo"].view(c.num_kv_heads, c.group_size, c.head_dim).amax(1)
        wmax = o.abs().amax(0).view(c.num_kv_heads, c.group_size, c.head_dim).amax(1)
        s_kv = _factors(act, wmax, alpha)  # [K, E]
        v = w[p + "self_attn.v_proj.weight"]  # [K * E, D]
        w[p + "self_attn.v_proj.weight"] = v / s_kv.reshape(-1, 1)
        if p + "self_attn.v_proj.bias" in w:
            w[p + "self_attn.v_proj.bias"] = w[p + "self_attn.v_proj.bias"] / s_kv.reshape(-1)
        s_heads = s_kv[:, None, :].expand(c.num_kv_heads, c.group_size, c.head_dim)
        w[p + "self_attn.o_proj.weight"] = o * s_heads.reshape(-1)
    return w
