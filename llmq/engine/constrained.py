"""Structured output: the response formats of the contract enforced token by token. Each
constrained request has its own llguidance matcher; before a step's logits are sampled, the
masks of all its constrained rows are computed together (in parallel, on a helper thread
that overlaps the forward pass) and the tokens they forbid are set to -inf. A sampled token
is then fed to its matcher. Free requests in the same step are untouched."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import torch

from llmq.contract import SamplingParams

from .model.tokenizer import TextTokenizer


class GrammarTokenizer:
    """The llguidance view of our tokenizer, built once per engine (about a second)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int, eos_ids: list[int]) -> None:
        self.vocab_size = vocab_size
        self.ll = llguidance.LLTokenizer(tokenizer.hf_json(), n_vocab=vocab_size,
                                         eos_token=eos_ids)
        self.executor = llguidance.LLExecutor(num_threads=2)


class Constraint:
    """One request's matcher."""

    def __init__(self, tokenizer: GrammarTokenizer, params: SamplingParams) -> None:
        grammar = params.response_format.grammar()
        assert grammar is not None
        self.matcher = llguidance.LLMatcher(tokenizer.ll, grammar, log_level=0)
        self._check()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise ValueError(f"response_format: {self.matcher.get_error()}")

    def advance(self, token: int) -> None:
        """Feeds the sampled token; raises ValueError if the matcher refused it."""
        self.matcher.consume_token(token)
        self._check()

    @property
    def done(self) -> bool:
        """The structure is complete and nothing more may follow."""
        return self.matcher.is_stopped()


class MaskWorker:
    """Computes the masks of a step on one helper thread, so that the work overlaps the
    model's forward pass (llguidance releases the GIL while it computes)."""

    def __init__(self, tokenizer: GrammarTokenizer) -> None:
        self.tokenizer = tokenizer
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmq-masks")
        self.seconds = 0.0  # time spent computing masks (by the one pool thread), for benches
        self.steps = 0

    def start(self, constraints: list[Constraint | None]) -> Future[torch.Tensor | None]:
        return self._pool.submit(self._compute, constraints)

    def _compute(self, constraints: list[Constraint | None]) -> torch.Tensor | None:
        rows = [(c.matcher, i) for i, c in enumerate(constraints) if c is not None]
        if not rows:
            return None
        import llguidance.torch  # here: it imports torch._dynamo, a second off every start

        started = time.perf_counter()
        mask = llguidance.torch.allocate_token_bitmask(len(constraints),
                                                       self.tokenizer.vocab_size)
        llguidance.torch.fill_next_token_bitmask_par(self.tokenizer.executor, rows, mask)
        self.seconds += time.perf_counter() - started
        self.steps += 1
        return mask

    def close(self) -> None:
        self._pool.shutdown(wait=False)


_BITS = torch.arange(32, dtype=torch.int32)


def apply_masks(logits: torch.Tensor, mask: torch.Tensor | None,
                constraints: list[Any]) -> torch.Tensor:
    """``logits [N, V]`` with every token a row's matcher forbids at -inf (a copy)."""
    if mask is None:
        return logits
    rows = torch.tensor([i for i, c in enumerate(constraints) if c is not None])
    vocab = logits.shape[1]
    bits = ((mask[rows].unsqueeze(-1) >> _BITS) & 1).reshape(len(rows), -1)[:, :vocab]
    logits = logits.float().clone()
    sub = logits[rows]
    sub.masked_fill_(bits.to(logits.device) == 0, float("-inf"))
    logits[rows] = sub
    return logits
