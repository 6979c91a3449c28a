"""llmq's native top-k over rows (the greedy choice and the int8 head's candidates): the same
indices as PyTorch's, ties to the lower index as argmax, NaN never chosen, and PyTorch's own
forms when the native kernels are off (as in the tests' process)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch

from llmq.engine import native

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="native kernels are built with a C++ compiler")


@pytest.fixture
def native_on() -> Iterator[None]:
    native.configure(True)
    yield
    native.configure(False)  # the tests' process runs PyTorch's forms (conftest)


def test_top_k_matches_pytorch_on_a_vocabulary(native_on: None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 49_152 + 5, generator=g) * 4  # not a multiple of any vector width
    for k in (1, 4, 16):
        assert torch.equal(native.top_k_indices(x, k), x.topk(k, dim=-1).indices)
    assert torch.equal(native.top_k_indices(x, 1)[:, 0], x.argmax(-1))
    wide = torch.randn(8, 2 * 1000, generator=g)[:, :1000]  # rows with a stride of their own
    assert torch.equal(native.top_k_indices(wide, 3), wide.topk(3, dim=-1).indices)


def test_top_k_breaks_ties_low_and_skips_nan(native_on: None) -> None:
    x = torch.zeros(4, 100)
    x[0, 50] = 1.0  # one winner, then ties among zeros
    x[1] = float("-inf")  # a row a grammar masked whole
    x[2, 7], x[2, 9] = float("nan"), 2.0
    x[3, 60:] = 3.0
    assert native.top_k_indices(x, 3).tolist() == [[50, 0, 1], [0, 1, 2], [9, 0, 1],
                                                    [60, 61, 62]]
    assert torch.equal(native.top_k_indices(x[[0, 1, 3]], 1)[:, 0], x[[0, 1, 3]].argmax(-1))


def test_pytorch_serves_when_the_native_kernels_are_off() -> None:
    assert not native.enabled()
    x = torch.randn(3, 50)
    assert torch.equal(native.top_k_indices(x, 1)[:, 0], x.argmax(-1))
    assert torch.equal(native.top_k_indices(x, 5), x.topk(5, dim=-1).indices)
