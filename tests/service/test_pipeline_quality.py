"""The pipeline's summaries on the real SmolLM2 over the long documents that ship with llmq
(two licences, release notes, meeting notes; three longer than the context), with the shipped
settings: none may loop, repeat a sentence or miss its document's topic."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from llmq.db import pipeline as store
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker.pipeline.quality import FLOOR_DISTINCT_TRIGRAMS, measure
from llmq.worker.pipeline.run import run_local, start_run
from tests.conftest import Tiny

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "documents"
LONG_DOCUMENTS = EXAMPLES.parent / "long-documents"


def _summarize(folder: Path, model: str) -> list[dict]:
    """A pipeline run over ``folder`` in this process (``pipeline summarize --local``)."""
    run_id = start_run(folder, name=folder.name, model=model)
    run_local(run_id, slots=32)  # as bench/pipeline.py runs it
    with session_scope() as session:
        return store.run_summaries(session, run_id)


def test_summaries_of_long_documents_are_loop_free_and_on_topic(sqlite_env: None) -> None:
    summaries = _summarize(LONG_DOCUMENTS, "smollm2-135m")
    assert len(summaries) == len(list(LONG_DOCUMENTS.iterdir())) == 4
    for s in summaries:
        q = measure(s["summary"], (LONG_DOCUMENTS / s["document"]).read_text())
        assert q.repeated_sentences == 0, s
        assert q.distinct_trigrams >= FLOOR_DISTINCT_TRIGRAMS, s
        assert q.salient_hits >= 1, s
        assert q.as_dict() == {**s["quality"]}  # what was stored is what is measured
        assert not s["flagged"]


SUMMARY_SCHEMA = {"type": "object", "additionalProperties": False,
                  "required": ["title", "summary", "keywords"],
                  "properties": {"title": {"type": "string", "maxLength": 20},
                                 "summary": {"type": "string", "maxLength": 60},
                                 "keywords": {"type": "array", "maxItems": 2,
                                              "items": {"type": "string", "maxLength": 10}}}}


def test_structured_summaries_are_exported_parsed(sqlite_env: None, tiny: Tiny,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With a summary schema, each final summary is JSON that validates and is exported
    parsed; the tiny model's nonsense is retried and flagged, but still well-formed."""
    monkeypatch.setenv("LLMQ_PIPELINE_SUMMARY_SCHEMA", json.dumps(SUMMARY_SCHEMA))
    get_settings.cache_clear()
    summaries = _summarize(EXAMPLES / "notes", str(tiny.gguf))
    assert len(summaries) == 2
    for s in summaries:
        jsonschema.validate(s["parsed"], SUMMARY_SCHEMA)
        assert json.loads(s["summary"]) == s["parsed"]
        assert s["quality"]["words"] > 0  # measured on the strings inside the JSON
