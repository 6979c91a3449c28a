"""Activation statistics on calibration prompts, the evidence that pruning and quantization
decide by: per input channel of every linear layer, the largest magnitude (SmoothQuant's
scales) and the mean square (activation-aware importance of FFN channels and heads), and per
decoder layer how much it changes its input (the block influence of whole layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model.decoder import LlamaModel
from .fidelity import sequence_logits

# the linear layers whose inputs are measured, by attribute name on DecoderLayer
MEASURED = ("wqkv", "wo", "w_gate", "w_down")


@dataclass
class LayerStats:
    absmax: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [in]
    sq_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [in]
    influence_sum: float = 0.0  # sum over tokens of 1 - cos(input, output)


@dataclass
class CalibrationStats:
    layers: list[LayerStats]
    tokens: int = 0

    def mean_square(self, layer: int, name: str) -> torch.Tensor:
        return self.layers[layer].sq_sum[name] / max(1, self.tokens)

    def influence(self, layer: int) -> float:
        """Block influence (ShortGPT): mean of 1 - cos(x_in, x_out) over calibration tokens."""
        return self.layers[layer].influence_sum / max(1, self.tokens)


@torch.inference_mode()
def collect_stats(model: LlamaModel, sequences: Sequence[list[int]]) -> CalibrationStats:
    """Runs each token sequence through ``model`` in one prefill, measuring as it goes."""
    stats = CalibrationStats([LayerStats() for _ in model.layers])
    hooks = []

    def on_linear_input(layer_stats: LayerStats, name: str):  # noqa: ANN202
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float()
            amax = x.abs().amax(dim=0)
            sq = x.square().sum(dim=0)
            prev = layer_stats.absmax.get(name)
            layer_stats.absmax[name] = amax if prev is None else torch.maximum(prev, amax)
            prev_sq = layer_stats.sq_sum.get(name)
            layer_stats.sq_sum[name] = sq if prev_sq is None else prev_sq + sq
        return hook

    def on_layer(layer_stats: LayerStats):  # noqa: ANN202
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                 out: torch.Tensor) -> None:
            cos = F.cosine_similarity(args[0].float(), out.float(), dim=-1)
            layer_stats.influence_sum += float((1 - cos).sum())
        return hook

    for layer, layer_stats in zip(model.layers, stats.layers, strict=True):
        hooks.append(layer.register_forward_hook(on_layer(layer_stats)))
        for name in MEASURED:
            hooks.append(getattr(layer, name).register_forward_pre_hook(
                on_linear_input(layer_stats, name)))
    try:
        for tokens in sequences:
            sequence_logits(model, tokens)
            stats.tokens += len(tokens)
    finally:
        for h in hooks:
            h.remove()
    return stats
