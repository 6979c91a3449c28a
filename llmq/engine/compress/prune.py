"""Structured pruning: FFN channels, attention heads in whole KV groups, and whole layers,
removed from the weights so that every matmul really shrinks.

Importance is activation-aware and measured on calibration prompts (``calibrate.py``):
- an FFN channel scores ``rms(activation) * ||down column||``, the size of what it adds to
  the residual stream (Wanda's weight-times-activation, per channel);
- a KV group scores the same over the output-projection columns of all its query heads;
- a layer scores its block influence, ``1 - cos(input, output)``: a layer that barely turns
  the residual stream is the cheapest to drop (ShortGPT).

With ``Grams`` from ``reconstruct.py`` (the recipe's ``reconstruct``, on by default), channels
and groups are ranked on per-token-normalised statistics instead, and each layer's output
projection is re-fitted to the channels it keeps, so the layer's output stays close to the
base's.

Every layer keeps the same number of channels and groups (each layer keeps its own best
ones), so a pruned model is still a plain Llama checkpoint with smaller sizes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import ModelConfig
from .calibrate import CalibrationStats
from .reconstruct import Grams, refit

CHANNEL_MULTIPLE = 32  # FFN widths stay multiples of this (GEMM blocking, int4 groups)


@dataclass(frozen=True)
class PruneRecipe:
    ffn: float = 0.0  # share of FFN channels removed per layer
    kv_groups: int = 0  # KV groups (with their query heads) removed per layer
    layers: int = 0  # whole layers removed
    reconstruct: bool = True  # re-fit output projections to what is kept (reconstruct.py)

    @property
    def empty(self) -> bool:
        return not (self.ffn or self.kv_groups or self.layers)

    def validate(self, config: ModelConfig) -> None:
        if not 0 <= self.ffn < 1:
            raise ValueError(f"FFN pruning ratio must be in [0, 1), not {self.ffn}")
        if not 0 <= self.kv_groups < config.num_kv_heads:
            raise ValueError(f"can remove 0 to {config.num_kv_heads - 1} KV groups per layer, "
                             f"not {self.kv_groups}")
        if not 0 <= self.layers < config.num_layers:
            raise ValueError(f"can remove 0 to {config.num_layers - 1} layers, "
                             f"not {self.layers}")


@dataclass(frozen=True)
class PruneReport:
    removed_layers: list[int]
    params_before: int
    params_after: int
    flops_per_token_before: int
    flops_per_token_after: int


def linear_params(config: ModelConfig) -> int:
    """Parameters of the matmuls in the decoder layers (what pruning can shrink)."""
    c = config
    attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    attn += c.num_heads * c.head_dim * c.hidden_size
    ffn = 3 * c.hidden_size * c.intermediate_size
    return c.num_layers * (attn + ffn)


def total_params(config: ModelConfig) -> int:
    c = config
    embed = c.vocab_size * c.hidden_size
    if c.head_tokens or not c.tie_word_embeddings:  # a head of its own
        embed += c.head_rows * c.hidden_size
    norms = c.hidden_size * (2 * c.num_layers + 1)
    return linear_params(config) + embed + norms


def params_per_token(config: ModelConfig) -> int:
    """The weights a generated token is computed from: every matmul's and norm's, and the head
    rows, but of the embedding table only the one row it reads."""
    c = config
    norms = c.hidden_size * (2 * c.num_layers + 1)
    return linear_params(config) + c.head_rows * c.hidden_size + c.hidden_size + norms


def flops_per_token(config: ModelConfig, context: int = 256) -> int:
    """Multiply-adds x 2 for one token: the layers' matmuls, attention over ``context``
    positions, and the output head."""
    c = config
    attention = 2 * 2 * c.num_heads * c.head_dim * context * c.num_layers
    return 2 * linear_params(config) + attention + 2 * c.hidden_size * c.head_rows


def prune(config: ModelConfig, weights: dict[str, torch.Tensor], stats: CalibrationStats,
          recipe: PruneRecipe, grams: Grams | None = None,
          ) -> tuple[ModelConfig, dict[str, torch.Tensor], PruneReport]:
    """Returns the pruned config and Hugging Face-named weights; ``stats`` (and ``grams``,
    which rank and re-fit when given) come from the base model with the same config."""
    recipe.validate(config)
    w = dict(weights)
    c = config
    keep_ffn = c.intermediate_size
    if recipe.ffn:
        keep_ffn = int(round(c.intermediate_size * (1 - recipe.ffn) / CHANNEL_MULTIPLE)
                       ) * CHANNEL_MULTIPLE
        keep_ffn = max(CHANNEL_MULTIPLE, keep_ffn)
    keep_groups = c.num_kv_heads - recipe.kv_groups
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        if keep_ffn < c.intermediate_size:
            idx, down = ffn_channels(w[p + "mlp.down_proj.weight"], stats, grams, i, keep_ffn)
            w[p + "mlp.gate_proj.weight"] = w[p + "mlp.gate_proj.weight"][idx]
            w[p + "mlp.up_proj.weight"] = w[p + "mlp.up_proj.weight"][idx]
            w[p + "mlp.down_proj.weight"] = down
        if keep_groups < c.num_kv_heads:
            _prune_groups(c, w, p, keep_groups,
                          grams.weighted(i, "wo") if grams is not None else None,
                          stats.mean_square(i, "wo"))
    removed: list[int] = []
    if recipe.layers:
        influence = torch.tensor([stats.influence(i) for i in range(c.num_layers)])
        removed = sorted(torch.topk(influence, recipe.layers, largest=False).indices.tolist())
        w = _drop_layers(w, c.num_layers, removed)
    heads = c.group_size * keep_groups
    pruned = replace(c, intermediate_size=keep_ffn, num_heads=heads, num_kv_heads=keep_groups,
                     num_layers=c.num_layers - len(removed))
    report = PruneReport(removed, total_params(c), total_params(pruned),
                         flops_per_token(c), flops_per_token(pruned))
    return pruned, w, report


def ffn_channels(down: torch.Tensor, stats: CalibrationStats, grams: Grams | None,
                 layer: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` FFN channels of ``layer`` worth most (sorted indices) and its down
    projection ``[D, keep]`` over them, re-fitted when ``grams`` are given."""
    gram = grams.weighted(layer, "w_down") if grams is not None else None
    square = gram.diagonal().float() if gram is not None else stats.mean_square(layer, "w_down")
    score = square.sqrt() * down.float().norm(dim=0)
    idx = torch.topk(score, keep).indices.sort().values
    return idx, (refit(down, gram, idx) if gram is not None else down[:, idx])


def _prune_groups(c: ModelConfig, w: dict[str, torch.Tensor], p: str, keep: int,
                  gram: torch.Tensor | None, o_input_sq: torch.Tensor) -> None:
    dim, group = c.head_dim, c.group_size
    o_proj = w[p + "self_attn.o_proj.weight"]  # [D, H * E]
    square = gram.diagonal().float() if gram is not None else o_input_sq
    contrib = square.sqrt() * o_proj.float().norm(dim=0)  # [H * E]
    score = contrib.view(c.num_kv_heads, group * dim).sum(-1)
    kept = torch.topk(score, keep).indices.sort().values  # KV groups kept
    q_heads = (kept[:, None] * group + torch.arange(group)).reshape(-1)

    def rows(heads: torch.Tensor) -> torch.Tensor:
        return (heads[:, None] * dim + torch.arange(dim)).reshape(-1)

    w[p + "self_attn.q_proj.weight"] = w[p + "self_attn.q_proj.weight"][rows(q_heads)]
    w[p + "self_attn.k_proj.weight"] = w[p + "self_attn.k_proj.weight"][rows(kept)]
    w[p + "self_attn.v_proj.weight"] = w[p + "self_attn.v_proj.weight"][rows(kept)]
    w[p + "self_attn.o_proj.weight"] = (refit(o_proj, gram, rows(q_heads)) if gram is not None
                                        else o_proj[:, rows(q_heads)])


def _drop_layers(w: dict[str, torch.Tensor], num_layers: int,
                 removed: list[int]) -> dict[str, torch.Tensor]:
    kept = [i for i in range(num_layers) if i not in set(removed)]
    renumber = {old: new for new, old in enumerate(kept)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in w.items():
        if name.startswith("model.layers."):
            _, _, idx, rest = name.split(".", 3)
            if int(idx) in renumber:
                out[f"model.layers.{renumber[int(idx)]}.{rest}"] = tensor
        else:
            out[name] = tensor
    return out
