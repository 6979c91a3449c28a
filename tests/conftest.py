"""Shared fixtures. The engine tests use a tiny random-weight model of the same architecture
and the real SmolLM2 tokenizer; tests/engine/model/test_smollm2.py loads the real SmolLM2
weights."""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llmq.engine.config import ModelConfig
from llmq.engine.host.process import compile_enabled, configure_process
from llmq.engine.model.tokenizer import TextTokenizer

from .engine.tiny import hf_model, random_weights, smollm2_tokenizer, tiny_config, write_gguf

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# unpacked checkpoints go to a folder of this run (workers inherit it), never the user's cache
os.environ["LLMQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmq-test-cache-")
atexit.register(shutil.rmtree, os.environ["LLMQ_CACHE_DIR"], True)
# but inductor's compiled graphs stay in its shared default cache: compiling cold in every run
# would cost minutes
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
# as every entry point does; the eager int8 path unless a test fuses layers itself
configure_process(compile=False)


@pytest.fixture(autouse=True)
def eager_process() -> Iterator[None]:
    """Restores that set-up after a test whose code under test configured the process for
    compilation (``llmq model optimize`` run in-process does), so no later test inherits it."""
    yield
    if compile_enabled():
        configure_process(compile=False)


@dataclass
class Tiny:
    tokenizer: TextTokenizer
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    gguf: Path
    hf: torch.nn.Module


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    tok = smollm2_tokenizer()
    cfg = tiny_config(tok)
    weights = random_weights(cfg)
    path = write_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", cfg, weights)
    return Tiny(tok, cfg, weights, path, hf_model(cfg, weights))


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The settings of this test point at a SQLite file of its own."""
    from llmq.db.session import dispose_engines
    from llmq.settings import get_settings

    monkeypatch.setenv("LLMQ_DATABASE_URL", f"sqlite:///{tmp_path / 'llmq.db'}")
    get_settings.cache_clear()
    dispose_engines()
    yield
    get_settings.cache_clear()
    dispose_engines()
