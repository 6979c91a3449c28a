"""Loop detection on plain token lists and text."""

from __future__ import annotations

from llmq.engine.stops import repeated_block, repeated_sentence


def test_a_repeated_block_is_found_and_cut_after_its_first_occurrence() -> None:
    head = list(range(100, 120))
    block = list(range(10))
    output = head + block * 6
    assert repeated_block(output) == len(head) + len(block)


def test_short_repeats_are_not_loops() -> None:
    assert repeated_block(list(range(30)) + [1, 2] * 5) is None  # 10 tokens, under min_span
    assert repeated_block(list(range(200))) is None
    assert repeated_block([7] * 47) is None
    assert repeated_block([7] * 60) == 1


def test_a_long_sentence_seen_twice_is_a_loop() -> None:
    sentence = "The work is a derivative work of the Work as defined above."
    text = f"This licence covers software. {sentence} {sentence} "
    cut = repeated_sentence(text)
    assert cut is not None
    assert text[:cut].rstrip() == f"This licence covers software. {sentence}"


def test_a_short_sentence_needs_three_occurrences() -> None:
    assert repeated_sentence("It is good. It is good. ") is None
    text = "Intro here. It is good. It is good. It is good. "
    cut = repeated_sentence(text)
    assert cut is not None and text[:cut].rstrip() == "Intro here. It is good."


def test_distinct_sentences_and_unfinished_ones_are_not_loops() -> None:
    assert repeated_sentence("One thing happened here today. Another thing happened later on.") \
        is None
    sentence = "The work is a derivative work of the Work as defined"
    assert repeated_sentence(f"{sentence}. {sentence}") is None  # the second is unfinished
