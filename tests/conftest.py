"""Shared fixtures. The engine tests use a tiny random-weight model of the same architecture
and the real SmolLM2 tokenizer; tests marked slow load the real SmolLM2 weights."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("LLMQ_TEST_THREADS", "2")))
