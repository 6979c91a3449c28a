"""llmq.failpoints: inert unless LLMQ_FAILPOINTS arms a declared point; a misspelt point is an
error, never silently ignored (the fault tests in tests/faults/ fire them for real)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmq import failpoints


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    failpoints.armed.cache_clear()
    yield
    failpoints.armed.cache_clear()


def test_no_point_is_armed_unless_the_environment_says_so(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    assert failpoints.armed() == {}
    failpoints.request_starting("1", "@@crash@@", engine=None)  # inert: returns


def test_armed_points_and_their_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "request.crash=@@a@@; request.wedge=@@b@@")
    assert failpoints.armed() == {"request.crash": "@@a@@", "request.wedge": "@@b@@"}


@pytest.mark.parametrize("spec", ["request.crsh=@@a@@", "request.crash", "request.crash="])
def test_a_point_that_is_not_declared_or_has_no_marker_is_refused(
        spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, spec)
    with pytest.raises(failpoints.FailpointError, match=spec.replace(".", r"\.")):
        failpoints.armed()
