"""Repetition controls against their definitions: OpenAI's formula for frequency and presence
penalties, transformers' own logits processors for repetition_penalty and no_repeat_ngram_size,
and the engine's greedy decoding with them against a step-by-step reference."""

from __future__ import annotations

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from llmq.contract import FinishReason, SamplingParams
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.penalties import TokenHistory, penalize
from tests.conftest import Tiny

V = 50


def _history(prompt: list[int], output: list[int], **params: float) -> TokenHistory:
    history = TokenHistory(prompt, SamplingParams(**params))
    for t in output:
        history.add(t)
    return history


def test_frequency_and_presence_follow_openai_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, V)
    prompt, output = [1, 2, 3, 3], [3, 4, 4, 4, 7]
    got = penalize(logits, [_history(prompt, output, frequency_penalty=0.5,
                                     presence_penalty=0.25)])
    # mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence, c over the output
    counts = torch.bincount(torch.tensor(output), minlength=V).float()
    want = logits[0] - counts * 0.5 - (counts > 0).float() * 0.25
    torch.testing.assert_close(got[0], want)
    assert got[0, 1] == logits[0, 1]  # prompt tokens are not penalized by OpenAI's two


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, V) * 3
    prompt, output = [5, 9, 9, 11], [12, 5, 30]
    got = penalize(logits, [_history(prompt, output, repetition_penalty=penalty)])
    want = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + output]),
                                                     logits.clone())
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(n: int) -> None:
    torch.manual_seed(2)
    logits = torch.randn(1, V)
    prompt, output = [1, 2, 3, 1, 2], [4, 1, 2, 3, 1]
    got = penalize(logits, [_history(prompt, output, no_repeat_ngram_size=n)])
    want = NoRepeatNGramLogitsProcessor(n)(torch.tensor([prompt + output]), logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got[~torch.isinf(got)], want[~torch.isinf(want)])


def test_rows_without_penalties_are_untouched() -> None:
    logits = torch.randn(2, V)
    got = penalize(logits, [None, _history([1], [1], presence_penalty=1.0)])
    assert torch.equal(got[0], logits[0])
    assert got[1, 1] == logits[1, 1] - 1.0
    assert penalize(logits, [None, None]) is logits


def _reference_greedy(tiny: Tiny, prompt: list[int], n: int, penalty: float,
                      ngram: int) -> list[int]:
    """Greedy decoding by transformers' model and logits processors, one token at a time."""
    processors = [RepetitionPenaltyLogitsProcessor(penalty), NoRepeatNGramLogitsProcessor(ngram)]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids = torch.tensor([seq])
            scores = tiny.hf(ids).logits[:, -1].float()
            for proc in processors:
                scores = proc(ids, scores)
            seq.append(int(scores.argmax()))
    return seq[len(prompt):]


def test_engine_greedy_with_penalties_matches_reference(tiny_engine: Engine, tiny: Tiny) -> None:
    prompts = ["The river flows", "1, 2, 3,", "Once upon a time there lived a"]
    params = SamplingParams(max_tokens=16, ignore_eos=True, repetition_penalty=1.5,
                            no_repeat_ngram_size=2)
    results = tiny_engine.generate(GenerationRequest(prompt=p, params=params) for p in prompts)
    plain = tiny_engine.generate(
        GenerationRequest(prompt=p, params=SamplingParams(max_tokens=16, ignore_eos=True))
        for p in prompts)
    for prompt, result in zip(prompts, results, strict=True):
        ids = tiny.tokenizer.encode(prompt)
        assert result.token_ids == _reference_greedy(tiny, ids, 16, 1.5, 2), prompt
        seq = ids + result.token_ids
        for j in range(len(ids), len(seq)):  # no generated token completes an earlier bigram
            earlier = set(zip(seq[:j - 1], seq[1:j], strict=True))
            assert (seq[j - 1], seq[j]) not in earlier
    assert [r.token_ids for r in results] != [r.token_ids for r in plain]


def test_sampled_request_with_penalties_is_reproducible(tiny_engine: Engine) -> None:
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=7, ignore_eos=True,
                            frequency_penalty=1.0, presence_penalty=0.5)
    first, second = (tiny_engine.generate([GenerationRequest(prompt="Hello", params=params)])[0]
                     for _ in range(2))
    assert first.token_ids == second.token_ids
    counts = torch.bincount(torch.tensor(first.token_ids))
    unpenalized = tiny_engine.generate([GenerationRequest(
        prompt="Hello", params=params.model_copy(update={"frequency_penalty": 0.0,
                                                         "presence_penalty": 0.0}))])[0]
    assert unpenalized.token_ids != first.token_ids
    assert counts.max() <= torch.bincount(torch.tensor(unpenalized.token_ids)).max()


def test_a_looping_generation_stops_early_with_its_own_reason(tiny_engine: Engine) -> None:
    """The random tiny model loops under greedy decoding: with loop detection the request ends
    as "repetition" long before max_tokens; with ignore_eos (exact lengths) it runs on."""
    prompt = "1, 2, 3,"
    looped = tiny_engine.generate([GenerationRequest(
        prompt=prompt, params=SamplingParams(max_tokens=200))])[0]
    exact = tiny_engine.generate([GenerationRequest(
        prompt=prompt, params=SamplingParams(max_tokens=200, ignore_eos=True))])[0]
    assert exact.finish_reason == FinishReason.LENGTH
    assert looped.finish_reason == FinishReason.REPETITION
    assert looped.ok
    assert looped.completion_tokens < 200
    assert looped.token_ids == exact.token_ids[:looped.completion_tokens]
    assert exact.text.startswith(looped.text)
    assert len(looped.text) < len(exact.text)
