"""Summary quality measures on plain text."""

from __future__ import annotations

from llmq.worker.pipeline.quality import measure, salient_terms

DOCUMENT = """The harbour authority met to plan the dredging of the harbour channel.

Dredging the channel lets larger ships reach the harbour. The authority will pay for the
dredging from harbour fees.

Fishermen asked that dredging stop during the spawning season in the harbour."""


def test_salient_terms_are_the_documents_content_words() -> None:
    terms = salient_terms(DOCUMENT, k=3)
    assert terms[:2] == ["harbour", "dredging"]
    assert "the" not in salient_terms(DOCUMENT)


def test_a_looping_summary_fails_the_floor() -> None:
    loop = "The harbour will be dredged. " * 5
    q = measure(loop, DOCUMENT)
    assert q.repeated_sentences == 4
    assert q.distinct_trigrams < 0.5
    assert not q.passes


def test_an_on_topic_summary_passes_and_an_off_topic_one_does_not() -> None:
    good = measure("The authority plans to dredge the harbour channel for larger ships, "
                   "paid from fees; fishermen want a pause while fish spawn.", DOCUMENT)
    assert good.passes and good.repeated_sentences == 0 and good.distinct_trigrams == 1.0
    assert good.salient_hits >= 2
    assert 0 < good.compression < 1
    off = measure("I am ready to help you with anything you need today.", DOCUMENT)
    assert off.salient_hits == 0 and not off.passes
    assert not measure("", DOCUMENT).passes
