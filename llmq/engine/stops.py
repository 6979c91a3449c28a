"""Where a generation's text ends early: at a stop string, or where a loop began.

Loop detection: a small model decoding greedily over long, repetitive input falls into
loops (one sentence again and again until max_tokens). A loop is stopped as soon as it is
certain, and the text is cut back to before the repetition began, so it costs a few tokens and
leaves readable text. Torch-free: plain lists of token ids and strings."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LoopRules:
    # the tail of the output is one block of at most max_period tokens repeated, at least
    # twice and over at least min_span tokens (so "........" stops only when long)
    max_period: int = 200
    min_span: int = 48
    # a sentence of at least long_sentence_words words seen twice, or of at least
    # short_sentence_words seen three times
    long_sentence_words: int = 8
    short_sentence_words: int = 3


RULES = LoopRules()


def repeated_block(output: list[int], rules: LoopRules = RULES) -> int | None:
    """How many tokens to keep when the output ends in a repeated block (the text before the
    block's second occurrence), or None when it does not."""
    n = len(output)
    if n < rules.min_span:
        return None
    last = output[-1]
    for period in range(1, min(rules.max_period, n // 2) + 1):
        if output[n - 1 - period] != last or output[n - 2 * period:n - period] != output[-period:]:
            continue
        reps = 2
        while (reps + 1) * period <= n and \
                output[n - (reps + 1) * period:n - reps * period] == output[-period:]:
            reps += 1
        if reps * period >= rules.min_span:
            return n - (reps - 1) * period
    return None


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentence_key(sentence: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD.findall(sentence))


def repeated_sentence(text: str, rules: LoopRules = RULES) -> int | None:
    """Where to cut ``text`` when its last complete sentence repeats an earlier one often
    enough to be a loop (at the start of its second occurrence), or None."""
    parts = sentences(text)
    if text and not re.search(r"[.!?\n]\s*$", text):
        parts = parts[:-1]  # the last one is still being written
    if len(parts) < 2:
        return None
    key = sentence_key(parts[-1])
    if len(key) < rules.short_sentence_words:
        return None
    earlier = [i for i, s in enumerate(parts[:-1]) if sentence_key(s) == key]
    enough = 1 if len(key) >= rules.long_sentence_words else 2
    if len(earlier) < enough:
        return None
    # cut where the first repetition starts: after the first occurrence
    first_repeat = parts[earlier[1]] if len(earlier) > 1 else parts[-1]
    start = text.find(parts[earlier[0]])
    cut = text.find(first_repeat, start + len(parts[earlier[0]]))
    return cut if cut > 0 else None


def cut_at_stop(text: str, new_chars: int, stops: Sequence[str]) -> int | None:
    """Where to cut ``text`` at the first stop string its newest ``new_chars`` completed."""
    window = new_chars + max(len(s) for s in stops)
    base = max(0, len(text) - window)
    tail = text[base:]
    hits = [i for i in (tail.find(s) for s in stops if s) if i >= 0]
    return base + min(hits) if hits else None


LOOP_CHECK_EVERY = 8  # tokens between checks for a repeated block


def loop_cut(output: list[int], text: str, piece: str,
             decode: Callable[[list[int]], str]) -> int | None:
    """Where to cut ``text`` (the output so far, ``piece`` its newest part) when the output
    has started to loop, or None. Blocks are looked for every few tokens, sentences whenever
    one ends."""
    if len(output) % LOOP_CHECK_EVERY == 0:
        keep = repeated_block(output)
        if keep is not None:
            decoded = decode(output[:keep])
            # stop strings may have shortened the text already
            return len(decoded) if text.startswith(decoded) else min(len(decoded), len(text))
    if any(c in piece for c in ".!?\n"):
        return repeated_sentence(text)
    return None
