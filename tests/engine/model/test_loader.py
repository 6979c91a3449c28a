"""GGUF checkpoints are unpacked once and read back from the unpacked copy: the same model,
and a damaged copy never stops a load (it is unpacked again)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmq.engine.model import loader
from llmq.engine.model.loader import load_checkpoint
from tests.conftest import Tiny

CHAT = [{"role": "user", "content": "Hello there"}]


def test_a_gguf_file_is_read_once_then_from_its_unpacked_copy(tiny: Tiny,
                                                               tmp_path: Path) -> None:
    first = load_checkpoint(tiny.gguf, tmp_path)
    [folder] = [p for p in tmp_path.iterdir()]
    assert folder.name.startswith("tiny-") and (folder / "config.json").is_file()
    assert not list(tmp_path.glob("*.partial-*"))
    weights = load_file(str(folder / "model.safetensors"))
    assert set(weights) == set(first.weights)
    second = load_checkpoint(tiny.gguf, tmp_path)
    assert second.config == first.config and second.source == str(tiny.gguf)
    assert all(torch.equal(second.weights[k], v) for k, v in first.weights.items())
    assert second.tokenizer.encode_chat(CHAT) == first.tokenizer.encode_chat(CHAT)
    assert second.tokenizer.eos_token_ids == first.tokenizer.eos_token_ids
    # the copy is what is read now: a change to it shows
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2
    save_file(weights, str(folder / "model.safetensors"))
    third = load_checkpoint(tiny.gguf, tmp_path)
    assert torch.equal(third.weights["model.norm.weight"], 2 * first.weights["model.norm.weight"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_copy_falls_back_to_the_gguf_file(tiny: Tiny, tmp_path: Path, damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    original = load_checkpoint(tiny.gguf, tmp_path)
    [folder] = list(tmp_path.iterdir())
    copy = folder / "model.safetensors"
    data = copy.read_bytes()
    copy.write_bytes(b"not a safetensors file" if damage == "garbage" else data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="llmq.engine.model.loader"):
        again = load_checkpoint(tiny.gguf, tmp_path)
    assert "unreadable" in caplog.text
    assert all(torch.equal(again.weights[k], v) for k, v in original.weights.items())
    repaired = load_file(str(folder / "model.safetensors"))  # unpacked again
    assert all(torch.equal(repaired[k], v) for k, v in original.weights.items())


def test_a_copy_made_by_another_conversion_is_never_read(tiny: Tiny, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_checkpoint(tiny.gguf, tmp_path)
    [old] = list(tmp_path.iterdir())
    weights = load_file(str(old / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2  # what a bug once wrote
    save_file(weights, str(old / "model.safetensors"))
    # a copy of before llmq noted its source in it, named as UNPACK_FORMAT 1 named them
    stat = tiny.gguf.stat()
    legacy = hashlib.sha256(f"{tiny.gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
                            .encode()).hexdigest()[:16]
    shutil.copytree(old, tmp_path / f"{tiny.gguf.stem}-{legacy}")
    other = tmp_path / "other-0123456789abcdef"  # another file's copy
    shutil.copytree(old, other)
    (other / loader.SOURCE_NOTE).write_text(json.dumps({"source": "/elsewhere/other.gguf"}))
    monkeypatch.setattr(loader, "UNPACK_FORMAT", loader.UNPACK_FORMAT + 1)  # the bug fixed
    again = load_checkpoint(tiny.gguf, tmp_path)
    assert torch.equal(again.weights["model.norm.weight"], original.weights["model.norm.weight"])
    # a copy of its own; the stale ones of this file (fp32 models' size) are deleted, not
    # another file's
    [fresh] = [p for p in tmp_path.iterdir() if p != other]
    assert fresh != old and other.is_dir()
    assert json.loads((fresh / loader.SOURCE_NOTE).read_text()) == {
        "source": str(tiny.gguf.resolve())}
