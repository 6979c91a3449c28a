"""The request contract: one definition of the sampling parameters, their bounds and their
defaults, from the input line to the stored JSON to what the engine samples with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmq.api import service
from llmq.api.inputs import InputFileError, read_input
from llmq.contract import (
    DEFAULT_MAX_TOKENS,
    SEED_MAX,
    SamplingOverrides,
    SamplingParams,
    defaults_from,
)
from llmq.db.session import session_scope
from llmq.settings import Settings, get_settings


def test_every_line_field_is_a_stored_parameter() -> None:
    """Adding a field to one and not the other would drop it between parser and engine."""
    assert set(SamplingOverrides.model_fields) == set(SamplingParams.model_fields)


def test_bounds_are_the_same_for_a_line_and_for_stored_params() -> None:
    for field, bad in [("max_tokens", 0), ("temperature", 5.5), ("top_p", 0.0),
                       ("top_k", -1), ("seed", SEED_MAX + 1)]:
        with pytest.raises(ValueError, match=field):
            SamplingOverrides.model_validate({field: bad})
        with pytest.raises(ValueError, match=field):
            SamplingParams.from_stored({field: bad})


def test_defaults_come_from_settings_then_the_contract() -> None:
    assert defaults_from(Settings()) == {}
    assert SamplingParams.from_stored({}).max_tokens == DEFAULT_MAX_TOKENS
    assert SamplingParams.from_stored({}).greedy
    s = Settings(max_tokens=12, temperature=0.5)
    assert defaults_from(s) == {"max_tokens": 12, "temperature": 0.5}
    assert defaults_from(s, max_tokens=3, temperature=None) == {"max_tokens": 3,
                                                                "temperature": 0.5}


def test_stored_params_round_trip_and_ignore_unknown_keys() -> None:
    params = SamplingParams(max_tokens=7, temperature=0.3, seed=-5, stop="END")
    stored = params.stored()
    assert json.loads(json.dumps(stored)) == stored
    assert stored["stop"] == ["END"] and stored["response_format"] == {"type": "text"}
    assert SamplingParams.from_stored({**stored, "from_an_older_llmq": 1}) == params


def test_a_seed_torch_cannot_take_is_a_line_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "x", "temperature": 0.7, "seed": 2**64}) + "\n"
                    + json.dumps({"prompt": "y", "response_format": {"type": "xml"}}) + "\n")
    parsed = read_input(path)
    assert parsed.accepted == []
    assert parsed.rejected[0].error.startswith("line 1: seed:")
    assert parsed.rejected[1].error.startswith("line 2: response_format")


def test_requests_are_stored_with_complete_params(tmp_path: Path, sqlite_env: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from llmq.db.models import Request

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "prompt": "x", "top_k": 4}) + "\n")
    monkeypatch.setenv("LLMQ_TEMPERATURE", "0.25")
    get_settings.cache_clear()
    report = service.store_batch(path, max_tokens=9)
    with session_scope() as session:
        stored = session.get(Request, report.request_ids[0]).params
    assert stored == SamplingParams(max_tokens=9, temperature=0.25, top_k=4).stored()
    monkeypatch.setenv("LLMQ_TEMPERATURE", "9")
    get_settings.cache_clear()
    with pytest.raises(InputFileError, match="request defaults: temperature"):
        service.store_batch(path)
