"""Recovery after structured pruning, by local reconstruction: each pruned layer's output
projection is re-fitted so that, on calibration text, the layer adds to the residual stream
what the base layer added (distillation on hidden states, one layer at a time, in closed
form), and the channels to keep are ranked on the same statistics.

Removing FFN channels (or attention heads) drops their share of ``down_proj``'s (``o_proj``'s)
input; the kept channels are correlated with the dropped ones, so a least-squares re-fit of
the projection over the kept channels recovers part of what was lost. With ``G`` the
(weighted) Gram matrix of the projection's input over calibration tokens and ``S`` the kept
channels, ``W' = W G[:, S] (G[S, S] + λI)⁻¹`` minimises the weighted ``‖X_S W'ᵀ - X Wᵀ‖²``.
Only Gram matrices are kept, never activations: one prefill of the calibration tokens and one
small solve per layer, seconds on a CPU, where gradient training of this model is slow.

The weighting is what makes it work on SmolLM2 (measured in bench/prune_recovery.py): the
first position of every sequence is an attention sink whose activations are hundreds of times
larger than any other token's, so a plain Gram matrix is that one token. Each position is
scaled to unit norm and the first position of the sequences is counted once, with the weight
of all the others together: the sink's output stays as it was (fitting without it ruins the
model) and ordinary tokens decide the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..model.decoder import LlamaModel
from .fidelity import sequence_logits

# the projections whose inputs lose channels when FFN channels or KV groups are pruned
REFITTED = ("w_down", "wo")
DAMPING = 0.01  # ridge, as a share of the mean diagonal (GPTQ's dampening)


@dataclass
class Grams:
    """Per (layer, projection): the sum of ``y yᵀ`` over positions after the first, ``y``
    the input scaled to unit norm; and ``y₀ y₀ᵀ`` of the first position."""

    body: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    sink: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    positions: int = 0

    def weighted(self, layer: int, name: str) -> torch.Tensor:
        """The Gram matrix the fit minimises over (float64); its diagonal, each input
        channel's mean square under the same weighting, is what pruning ranks by."""
        key = (layer, name)
        return self.body[key] / max(1, self.positions) + self.sink[key]


@torch.inference_mode()
def collect_grams(model: LlamaModel, sequences: Sequence[list[int]],
                  names: Sequence[str] = REFITTED) -> Grams:
    grams = Grams()
    hooks = []

    def on_input(key: tuple[int, str]):  # noqa: ANN202
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float()
            y = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            body = (y[1:].T @ y[1:]).double()
            grams.body[key] = body if key not in grams.body else grams.body[key] + body
            grams.sink[key] = (y[:1].T @ y[:1]).double()
        return hook

    for i, layer in enumerate(model.layers):
        for name in names:
            hooks.append(getattr(layer, name).register_forward_pre_hook(on_input((i, name))))
    try:
        for tokens in sequences:
            sequence_logits(model, tokens)
            grams.positions += len(tokens) - 1
    finally:
        for h in hooks:
            h.remove()
    return grams


def refit(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor,
          damping: float = DAMPING) -> torch.Tensor:
    """The projection ``weight`` ``[out, in]`` re-fitted to the ``kept`` input channels:
    ``[out, len(kept)]``, in ``weight``'s dtype."""
    g_kk = gram[kept][:, kept]
    g_kk = g_kk + damping * g_kk.diagonal().mean() * torch.eye(len(kept), dtype=gram.dtype)
    rhs = gram[kept] @ weight.double().T  # [k, out]
    return torch.linalg.solve(g_kk, rhs).T.to(weight.dtype).contiguous()
