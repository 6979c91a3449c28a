"""Kernel timings are measured once per machine and kept on disk, keyed by what they depend
on; a damaged file or a folder that cannot be written never stops a start
(llmq/engine/host/measured.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmq.engine.host import measured
from llmq.engine.kernels import int8 as int8_kernels


@pytest.fixture
def kept_in(tmp_path: Path) -> Iterator[Path]:
    measured.configure(tmp_path)
    measured._warned.clear()
    yield tmp_path
    measured.configure(None)


class Counting:
    def __init__(self, value: object) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> object:
        self.calls += 1
        return self.value


def test_a_timing_is_measured_once_and_read_back_by_the_next_process(
        kept_in: Path, caplog: pytest.LogCaptureFixture) -> None:
    measure = Counting({"onednn": 0.5, "fbgemm": 0.25})
    with caplog.at_level(logging.INFO, logger="llmq.progress"):
        assert measured.remembered("gemm", measure) == {"onednn": 0.5, "fbgemm": 0.25}
        assert measured.remembered("other", Counting(1)) == 1
    # one progress line while a first start measures, naming where it keeps what it finds
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llmq.progress"]
    assert str(kept_in) in line
    assert measured.remembered("gemm", measure) == {"onednn": 0.5, "fbgemm": 0.25}
    measured.configure(kept_in)  # what a new process sees: the file alone
    assert measured.remembered("gemm", measure) == {"onednn": 0.5, "fbgemm": 0.25}
    assert measure.calls == 1
    file = measured.path()
    assert file is not None and file.parent.parent == kept_in
    assert json.loads(file.read_text()) == {"gemm": {"onednn": 0.5, "fbgemm": 0.25},
                                            "other": 1}


def test_another_torch_build_measures_again(kept_in: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    measured.remembered("gemm", Counting(1.0))
    first = measured.path()
    monkeypatch.setattr(torch, "__version__", "0.0.0+another")
    measured.configure(kept_in)
    again = Counting(2.0)
    assert measured.remembered("gemm", again) == 2.0 and again.calls == 1
    assert measured.path() != first


def test_a_truncated_file_is_measured_again_and_rewritten(
        kept_in: Path, caplog: pytest.LogCaptureFixture) -> None:
    measured.remembered("gemm", Counting(1.0))
    file = measured.path()
    assert file is not None
    file.write_text(file.read_text()[:5])
    measured.configure(kept_in)
    again = Counting(3.0)
    with caplog.at_level(logging.WARNING, logger=measured.__name__):
        assert measured.remembered("gemm", again) == 3.0
    assert again.calls == 1
    assert [r.message for r in caplog.records if "unreadable" in r.message]
    assert json.loads(file.read_text()) == {"gemm": 3.0}


def test_a_folder_that_cannot_be_written_is_bypassed_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # running as root, a file in the way is what write access cannot undo
    measured.configure(blocker)
    measured._warned.clear()
    try:
        with caplog.at_level(logging.WARNING, logger=measured.__name__):
            assert measured.remembered("a", Counting(1)) == 1
            assert measured.remembered("b", Counting(2)) == 2
            assert measured.remembered("a", Counting(5)) == 1  # kept for the process
    finally:
        measured.configure(None)
    assert len([r for r in caplog.records if "not kept" in r.message]) == 1
    assert blocker.read_text() == ""


def test_the_int8_kernel_choice_comes_from_the_kept_timing(
        kept_in: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not int8_kernels.fbgemm_available():
        pytest.skip("one int8 kernel here: nothing is timed")
    monkeypatch.setattr(int8_kernels, "_chosen", None)
    monkeypatch.setattr(int8_kernels, "_pinned", None)
    chosen = int8_kernels.int8_kernel()
    file = measured.path()
    assert file is not None
    stored = json.loads(file.read_text())
    (key,) = stored
    assert key.startswith("int8-gemm") and set(stored[key]) == set(int8_kernels.KERNELS)
    # a kept timing that says the other kernel is far faster decides the next process
    other = "fbgemm" if chosen == "onednn" else "onednn"
    file.write_text(json.dumps({key: {chosen: 100.0, other: 1.0}}))
    measured.configure(kept_in)
    monkeypatch.setattr(int8_kernels, "_chosen", None)
    assert int8_kernels.int8_kernel() == other
