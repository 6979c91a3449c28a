"""Next-token choice per request. Each sampled request draws from its own generator seeded by
its own seed, so its text does not depend on what else shares the batch."""

from __future__ import annotations

import torch

from llmq.contract import SamplingParams

from .kernels.native import top_k_indices


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample_row(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token from ``logits [V]`` (float32) with temperature, top-k and top-p."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (the first token always stays)
        drop = (cum - sorted_probs) >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """Tokens for ``logits [N, V]``: greedy rows in one argmax (llmq's native kernel on CPU,
    which reads each row once; csrc/top_k.cpp), sampled rows one by one."""
    tokens = top_k_indices(logits, 1)[:, 0].tolist()
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if not p.greedy:
            assert gen is not None
            tokens[i] = sample_row(logits[i], p, gen)
    return tokens
