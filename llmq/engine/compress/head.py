"""Head surgery: a model's output head rebuilt over fewer token ids (vocabulary pruning) or
in another precision, with the config made to say so."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..model.decoder import LlamaModel
from ..model.head import OutputHead


def rebuild_head(model: LlamaModel, kept: torch.Tensor | None = None,
                 scheme: str | None = None) -> LlamaModel:
    """``model`` with its head over ``kept`` token ids (None: the rows it keeps now) in
    ``scheme`` (None: as now); in place, returned for chaining. An int8 head re-ranks from the
    tied embedding, so a model with a head of its own keeps it float."""
    c = model.config
    scheme = c.head_scheme if scheme is None else scheme
    if scheme and not c.tie_word_embeddings:
        raise ValueError("an int8 head re-ranks from the tied embedding: this model's head "
                         "is its own weight, so keep it float")
    old = model.lm_head
    if isinstance(old, OutputHead):
        kept = old.kept if kept is None and old.kept.numel() else kept
        weight = model.embed.weight.detach()  # an OutputHead only exists on tied models
    else:
        weight = old.weight.detach()
    model.lm_head = OutputHead.from_weight(weight, kept, scheme)
    rows = model.lm_head.rows  # type: ignore[union-attr]
    model.config = replace(c, head_tokens=rows if rows < c.vocab_size else 0,
                           head_scheme=scheme)
    return model
