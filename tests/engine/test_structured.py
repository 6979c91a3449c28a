"""Structured output on the tiny random model: whatever the weights, the grammar decides what
may be written, so every completed output must match its format."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from pydantic import ValidationError

from llmq.contract import FinishReason, SamplingOverrides, SamplingParams
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 130}}}


def _params(fields: dict, **extra: object) -> SamplingParams:
    fmt = SamplingOverrides.model_validate(fields).response_format
    return SamplingParams(response_format=fmt, **extra)  # type: ignore[arg-type]


def _schema(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "t", "schema": schema, "strict": True}}}


def test_every_format_is_obeyed_greedy_and_sampled(tiny_engine: Engine) -> None:
    cases = [({"choice": ["alpha", "beta", "gamma delta"]},
              lambda t: t in ("alpha", "beta", "gamma delta")),
             ({"regex": r"[0-9]{3}-[a-z]{2}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
             (_schema(PERSON), lambda t: jsonschema.validate(json.loads(t), PERSON) is None)]
    requests = []
    for fields, _ in cases:
        for extra in ({}, {"temperature": 1.0, "seed": 3}):
            requests.append(GenerationRequest(prompt="Write:", params=_params(
                fields, max_tokens=120, **extra)))
    results = tiny_engine.generate(requests)
    for i, result in enumerate(results):
        _, check = cases[i // 2]
        assert result.finish_reason == FinishReason.STOP, (result.text, result.error)
        assert check(result.text), result.text


def test_json_object_mode_writes_an_object(tiny_engine: Engine) -> None:
    """Any object: the random model may write an endless key, but it writes inside an object
    and, when it stops, a complete one."""
    results = tiny_engine.generate([GenerationRequest(prompt=p, params=_params(
        {"response_format": {"type": "json_object"}}, max_tokens=40))
        for p in ("JSON:", "Hello", "1, 2, 3")])
    for result in results:
        assert result.text.startswith("{")
        if result.finish_reason == FinishReason.STOP:
            assert isinstance(json.loads(result.text), dict)


def test_constrained_and_free_requests_share_steps(tiny_engine: Engine) -> None:
    free = SamplingParams(max_tokens=12, ignore_eos=True)
    alone = tiny_engine.generate([GenerationRequest(prompt="The river", params=free)])[0]
    mixed = tiny_engine.generate([
        GenerationRequest(prompt="The river", params=free),
        GenerationRequest(prompt="Pick:", params=_params({"choice": ["yes", "no"]}, max_tokens=8)),
    ])
    assert mixed[0].token_ids == alone.token_ids  # the free one is untouched
    assert mixed[1].text in ("yes", "no") and mixed[1].finish_reason == FinishReason.STOP
    assert mixed[0].timing.batch_size > 1


def test_a_structure_cut_by_max_tokens_ends_as_length(tiny_engine: Engine) -> None:
    result = tiny_engine.generate([GenerationRequest(
        prompt="JSON:", params=_params(_schema(PERSON), max_tokens=3))])[0]
    assert result.finish_reason == FinishReason.LENGTH
    assert result.text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(result.text)


@pytest.mark.parametrize("fields, needle", [
    ({"regex": "(unclosed"}, "response_format.regex"),
    (_schema({"type": "no-such-type"}), "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!",
                                                                 "schema": {}}}}, "name"),
    ({"regex": "a", "choice": ["a"]}, "give one of regex, choice"),
    ({"choice": []}, "choice"),
])
def test_a_format_that_cannot_be_compiled_is_refused(fields: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        SamplingOverrides.model_validate(fields)
    assert needle in str(info.value)


def test_formats_round_trip_through_storage() -> None:
    params = _params(_schema(PERSON), max_tokens=9)
    stored = params.stored()
    assert stored["response_format"]["json_schema"]["schema"] == PERSON  # OpenAI's shape
    assert SamplingParams.from_stored(json.loads(json.dumps(stored))) == params
