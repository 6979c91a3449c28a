"""The KV cache: keys and values of every layer, slot and position, allocated once, and the
conversions of a step's keys and values to and from its storage (float32, float16, bfloat16,
or int8 codes with a float32 scale per position and head)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..host.memory import zeros_lazily

_FLOAT16_MAX = 65504.0
_SCALE_BYTES = 4  # an int8 cache row ends in its float32 scale


def cache_row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements of one cached position of one head: the head's values, and for int8 the 4
    bytes of their float32 scale."""
    return head_dim + (_SCALE_BYTES if dtype == torch.int8 else 0)


def to_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x [N, E]`` as rows of the cache's dtype. float16 saturates rather than overflows:
    one infinite key would turn the masked products of decode attention (0 x inf) into NaN.
    int8 rows are the codes of ``x / s``, ``s = max |x| / 127`` per row (rounded to nearest
    even), followed by ``s`` as 4 bytes: ``[N, E + 4]``; the native kernel writes the same."""
    if dtype == torch.int8:
        x = x.float()
        top = x.abs().amax(-1, keepdim=True)
        scale = torch.where(top > 0, top, 1.0) / 127
        codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return torch.cat([codes, scale.view(torch.int8)], dim=-1)
    if dtype == torch.float16 and x.dtype != dtype:
        x = x.clamp(-_FLOAT16_MAX, _FLOAT16_MAX)
    return x.to(dtype)


def from_cache(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cached rows ``[..., R]`` as ``[..., E]`` of ``dtype`` (for the paths that attend in
    PyTorch; the native kernel reads the cache as it is)."""
    if x.dtype != torch.int8:
        return x.to(dtype)
    dim = x.shape[-1] - _SCALE_BYTES
    scale = x[..., dim:].contiguous().view(torch.float32)  # [..., 1]
    return (x[..., :dim].float() * scale).to(dtype)


def prompt_chunk_limit(config: ModelConfig, slot_length: int) -> int | None:
    """Most prompt tokens of one sequence per step where a layer keeps only a ring of its
    window (``positions_kept``): the smallest such window, else None (no limit but the step's).
    A step writes all its keys before any row attends, so a ring must hold a chunk's keys
    beside the window its first row sees."""
    windows = [w for i in range(config.num_layers)
               if (w := config.layer_window(i)) and w < slot_length]
    return min(windows) if windows else None


def positions_kept(config: ModelConfig, index: int, slot_length: int, chunk: int) -> int:
    """Cache positions per slot of layer ``index``: every position of the slot, or for a
    windowed layer a ring of ``window + chunk - 1`` (position p at p mod that), enough for
    the keys that a step's rows of ``chunk`` consecutive positions see."""
    window = config.layer_window(index)
    if not window or window >= slot_length:
        return slot_length
    return min(slot_length, window + chunk - 1)


class KVCache(nn.Module):
    """Keys and values of every layer and slot, allocated once: per group of layers that keep
    as many positions (``positions_kept``: the whole slot, or a windowed layer's ring) one
    buffer ``[layers, 2, S, K, P, R]``, R the width of a cached row (``cache_row_width``: E,
    or E + 4 for int8). A layer's keys and values are ``[S, K, P, R]``, position p at
    ``p % P``.

    It must start as zeros: decode attention reads every slot up to the longest one and masks
    the rest, and a masked NaN left in never-written memory would still poison the product.
    On CPU the zeros come from calloc (via numpy), which maps zero pages lazily, so the OS
    commits only the pages that steps write, however large the cache."""

    def __init__(self, config: ModelConfig, slots: int, length: int, dtype: torch.dtype,
                 device: torch.device, chunk: int | None = None) -> None:
        super().__init__()
        kept = [positions_kept(config, i, length, chunk or length)
                for i in range(config.num_layers)]
        self.kept_lengths = sorted(set(kept), reverse=True)
        where: list[tuple[int, int, int]] = []  # (layer, group, index in it)
        for g, positions in enumerate(self.kept_lengths):
            members = [i for i, p in enumerate(kept) if p == positions]
            where += [(i, g, j) for j, i in enumerate(members)]
            shape = (len(members), 2, slots, config.num_kv_heads, positions,
                     cache_row_width(config.head_dim, dtype))
            self.register_buffer(f"kv{g}", zeros_lazily(shape, dtype, device),
                                 persistent=False)
        self._where = [(g, j) for _, g, j in sorted(where)]
        self.slots = slots
        self.length = length
        self.dtype = dtype

    @property
    def groups(self) -> list[torch.Tensor]:
        return [getattr(self, f"kv{g}") for g in range(len(self.kept_lengths))]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, j = self._where[index]
        return self.groups[g][j, 0], self.groups[g][j, 1]

    def save_prefix(self, slot: int, n: int) -> list[torch.Tensor]:
        """A copy of what ``slot`` holds of its first ``n`` positions, just written: per group
        ``[layers, 2, K, min(n, P), R]`` (a ring's whole content once n passes it)."""
        return [kv[:, :, slot, :, :n].clone() for kv in self.groups]

    def restore_prefix(self, slot: int, saved: list[torch.Tensor]) -> None:
        """Puts a ``save_prefix`` copy into ``slot``, which then continues at position n."""
        for kv, part in zip(self.groups, saved, strict=True):
            kv[:, :, slot, :, :part.shape[3]] = part
