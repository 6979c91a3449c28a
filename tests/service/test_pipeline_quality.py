"""The pipeline's summaries on the real SmolLM2 over the long documents that ship with llmq
(two licences, release notes, meeting notes; three longer than the context), with the shipped
settings: none may loop, repeat a sentence or miss its document's topic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.db import pipeline as store
from llmq.db.session import dispose_engines, session_factory, session_scope
from llmq.settings import get_settings
from llmq.variants.registry import tokenizer_for
from llmq.worker.embedded import load_engine
from llmq.worker.pipeline.advance import advance
from llmq.worker.pipeline.quality import FLOOR_DISTINCT_TRIGRAMS, measure
from llmq.worker.pipeline.run import start_run
from llmq.worker.processing import process_ids

LONG_DOCUMENTS = Path(__file__).resolve().parents[2] / "examples" / "long-documents"


@pytest.fixture
def sqlite_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLMQ_DATABASE_URL", f"sqlite:///{tmp_path / 'llmq.db'}")
    get_settings.cache_clear()
    dispose_engines()
    yield
    get_settings.cache_clear()
    dispose_engines()


def test_summaries_of_long_documents_are_loop_free_and_on_topic(sqlite_only: None) -> None:
    run_id = start_run(LONG_DOCUMENTS, name="long")
    engine, ident = load_engine("smollm2-135m", slots=32)  # as bench/pipeline.py
    tokenizer = tokenizer_for("smollm2-135m")
    sessions = session_factory()
    try:
        while True:
            with sessions.begin() as session:
                step = advance(session, run_id, tokenizer)
            if step.finished:
                break
            process_ids(sessions, engine, step.new_ids, ident, max_attempts=1)
    finally:
        engine.close()
    with session_scope() as session:
        summaries = store.run_summaries(session, run_id)
    assert len(summaries) == len(list(LONG_DOCUMENTS.iterdir())) == 4
    for s in summaries:
        q = measure(s["summary"], (LONG_DOCUMENTS / s["document"]).read_text())
        assert q.repeated_sentences == 0, s
        assert q.distinct_trigrams >= FLOOR_DISTINCT_TRIGRAMS, s
        assert q.salient_hits >= 1, s
        assert q.as_dict() == {**s["quality"]}  # what was stored is what is measured
        assert not s["flagged"]
