"""Structured output on the real SmolLM2: the 50 extraction and classification prompts that
ship in examples/structured.jsonl, each with its own schema, regex or choice, constrained
and free requests in one batch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from llmq.api.inputs import read_input
from llmq.contract import FinishReason, SamplingParams
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.variants.registry import builtin_model_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "structured.jsonl"


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Engine]:
    engine = Engine.load(builtin_model_path("smollm2-135m"),
                         EngineConfig(slots=32, slot_length=1024))
    yield engine
    engine.close()


def _check(fmt: dict, text: str) -> None:
    kind = fmt["type"]
    if kind == "json_schema":
        jsonschema.validate(json.loads(text), fmt["json_schema"]["schema"])
    elif kind == "json_object":
        assert isinstance(json.loads(text), dict)
    elif kind == "regex":
        assert re.fullmatch(fmt["regex"], text), text
    else:
        assert text in fmt["choice"]


def test_shipped_structured_prompts_all_validate(smollm2: Engine) -> None:
    parsed = read_input(EXAMPLES)
    assert not parsed.rejected and len(parsed.accepted) >= 40
    requests = [GenerationRequest(messages=a.input["messages"],
                                  params=SamplingParams.from_stored(a.params))
                for a in parsed.accepted]
    free = GenerationRequest(messages=parsed.accepted[0].input["messages"],
                             params=SamplingParams(max_tokens=40))
    results = smollm2.generate([*requests, free])
    for accepted, request, result in zip(parsed.accepted, requests, results, strict=False):
        fmt = request.params.response_format.model_dump(mode="json", by_alias=True)
        assert result.ok, (accepted.custom_id, result.error)
        if fmt["type"] != "json_object":  # bounded formats close within max_tokens (128)
            assert result.finish_reason == FinishReason.STOP, (accepted.custom_id, result.text)
        if result.finish_reason == FinishReason.STOP:  # JSON mode may nest on and on
            _check(fmt, result.text)
    assert results[-1].ok and results[-1].text  # the free request shared the batch
    assert results[-1].timing.batch_size > 1
