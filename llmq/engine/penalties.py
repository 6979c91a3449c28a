"""Repetition controls, applied to a step's logits before sampling, row by row, for the requests
that ask for them. Each follows the definition users know it by:

- ``frequency_penalty`` and ``presence_penalty`` (OpenAI): the logit of a token that occurs in
  the output so far loses ``count * frequency + presence``; the prompt does not count.
- ``repetition_penalty`` (CTRL, Hugging Face): the logit of a token that occurs in the prompt
  or the output is divided by the penalty when positive and multiplied by it when negative.
- ``no_repeat_ngram_size`` (Hugging Face): a token that would complete an n-gram already
  present in the prompt or the output is banned.

They change logits only, so a seeded sampled request stays reproducible."""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from llmq.contract import SamplingParams


class TokenHistory:
    """What the penalties of one request need to know about its tokens, kept up to date one
    token at a time instead of recounted every step."""

    def __init__(self, prompt: list[int], params: SamplingParams) -> None:
        self.params = params
        self.output_counts: Counter[int] = Counter()
        self.seen: set[int] = set(prompt)
        self._tokens = list(prompt)
        self._ngrams: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
        n = params.no_repeat_ngram_size
        if n:
            for i in range(len(prompt) - n + 1):
                self._ngrams[tuple(prompt[i:i + n - 1])].add(prompt[i + n - 1])

    def add(self, token: int) -> None:
        self.output_counts[token] += 1
        self.seen.add(token)
        self._tokens.append(token)
        n = self.params.no_repeat_ngram_size
        if n and len(self._tokens) >= n:
            self._ngrams[tuple(self._tokens[-n:-1])].add(token)

    def banned(self) -> list[int]:
        """Tokens that would complete an n-gram seen before."""
        n = self.params.no_repeat_ngram_size
        if not n or len(self._tokens) < n - 1:
            return []
        key = tuple(self._tokens[len(self._tokens) - n + 1:])
        return sorted(self._ngrams.get(key, ()))


def penalize_row(row: torch.Tensor, history: TokenHistory) -> None:
    """Applies ``history``'s penalties to one row of logits ``[V]`` in place."""
    p = history.params
    device = row.device
    if p.repetition_penalty != 1.0 and history.seen:
        ids = torch.tensor(sorted(history.seen), device=device)
        values = row[ids]
        row[ids] = torch.where(values > 0, values / p.repetition_penalty,
                               values * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and history.output_counts:
        ids = torch.tensor(list(history.output_counts), device=device)
        counts = torch.tensor(list(history.output_counts.values()), device=device,
                              dtype=row.dtype)
        row[ids] -= counts * p.frequency_penalty + p.presence_penalty
    banned = history.banned()
    if banned:
        row[torch.tensor(banned, device=device)] = float("-inf")


def penalize(logits: torch.Tensor, histories: list[TokenHistory | None]) -> torch.Tensor:
    """``logits [N, V]`` with each row's penalties applied (a copy when any apply)."""
    rows = [i for i, h in enumerate(histories) if h is not None]
    if not rows:
        return logits
    logits = logits.float().clone()
    for i in rows:
        history = histories[i]
        assert history is not None
        penalize_row(logits[i], history)
    return logits
