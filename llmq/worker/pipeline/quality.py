"""Summary quality, measured by code so that a bad summary is caught rather than delivered:
repetition (distinct word trigrams, repeated sentences), length against the document
(compression) and whether it is about the document (its salient terms that the summary
mentions). Plain text statistics, torch-free."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from llmq.engine.stops import sentence_key, sentences

_WORD = re.compile(r"[a-z][a-z'-]+")
SALIENT_TERMS = 10
# common English words that say nothing about a document's topic
STOPWORDS = frozenset("""
a about above after again against all also an and any are as at be because been before being
below between both but by can could did do does doing down during each either else few for
from further had has have having he her here hers him his how if in into is it its itself just
may might more most must my no nor not now of off on once only or other our ours out over own
same shall she should so some such than that the their theirs them then there these they this
those through to too under until up upon very was we were what when where which while who whom
why will with within without would you your yours one two three any each every many much new
use used using make made get gets also however therefore thus such well like way ways part
""".split())

# a summary below any of these floors is retried once with sampling, then flagged
FLOOR_DISTINCT_TRIGRAMS = 0.8
FLOOR_SALIENT_HITS = 1


@dataclass(frozen=True)
class Quality:
    words: int
    distinct_trigrams: float  # distinct word trigrams / word trigrams (1.0 under 3 words)
    repeated_sentences: int  # sentences equal (case and punctuation aside) to an earlier one
    compression: float  # summary words / document words
    salient_terms: list[str]  # the document's top terms
    salient_hits: int  # how many of them the summary mentions

    @property
    def passes(self) -> bool:
        return (self.words > 0 and self.distinct_trigrams >= FLOOR_DISTINCT_TRIGRAMS
                and self.repeated_sentences == 0 and self.salient_hits >= FLOOR_SALIENT_HITS)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passes": self.passes}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    """Enough stemming to match "licences" with "licence" and "copying" with "copy"."""
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def salient_terms(text: str, k: int = SALIENT_TERMS) -> list[str]:
    """The document's salient terms: content words (stopwords and words under three letters
    left out) by their frequency in the document, weighted up by how many of its paragraphs
    use them, so that a term the whole document is about outranks one a single paragraph
    repeats. (Inverse document frequency needs other documents; one document must do.)"""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    surface = Counter(w for w in words(text) if len(w) >= 3 and w not in STOPWORDS)
    tf: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for word, count in surface.most_common():  # each stem shown as its most frequent word
        tf[_stem(word)] += count
        shown.setdefault(_stem(word), word)
    df = Counter(t for p in paragraphs for t in {_stem(w) for w in words(p)})
    score = {t: c * math.log(2 + df.get(t, 0)) for t, c in tf.items()}
    return [shown[t] for t in sorted(score, key=lambda t: (-score[t], t))[:k]]


def prose(summary: str) -> str:
    """The words of a summary: a structured (JSON) summary's strings, joined as sentences."""
    try:
        value = json.loads(summary)
    except ValueError:
        return summary
    parts: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            parts.append(v.strip().rstrip("."))
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return ". ".join(p for p in parts if p) + ("." if parts else "")


def measure(summary: str, document: str) -> Quality:
    summary = prose(summary)
    summary_words = words(summary)
    trigrams = list(zip(summary_words, summary_words[1:], summary_words[2:], strict=False))
    distinct = len(set(trigrams)) / len(trigrams) if trigrams else 1.0
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for sentence in sentences(summary):
        key = sentence_key(sentence)
        if len(key) >= 3 and key in seen:
            repeated += 1
        seen.add(key)
    terms = salient_terms(document)
    stems = {_stem(w) for w in summary_words}
    doc_words = len(words(document))
    return Quality(
        words=len(summary_words), distinct_trigrams=round(distinct, 4),
        repeated_sentences=repeated,
        compression=round(len(summary_words) / doc_words, 4) if doc_words else 0.0,
        salient_terms=terms, salient_hits=sum(_stem(t) in stems for t in terms))
