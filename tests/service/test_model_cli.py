"""`llmq model`: the registry and the fidelity of a variant against its base."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import Tiny
from tests.engine.tiny import write_gguf

from .workers import llmq


def test_list_import_and_eval(tiny: Tiny, tmp_path: Path) -> None:
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}", "LLMQ_THREADS": "1"}
    listed = json.loads(llmq(env, "model", "list", "--json").stdout)
    builtin = next(m for m in listed if m["name"] == "smollm2-135m")
    assert builtin["size_bytes"] > 90_000_000 and set(builtin) == {
        "name", "base", "recipe", "size_bytes", "fidelity", "tokens_per_s"}
    assert llmq(env, "model", "import", str(tiny.gguf), "--name", "tiny").stdout.strip() == "tiny"
    again = llmq(env, "model", "import", str(tiny.gguf), "--name", "tiny", check=False)
    assert again.returncode == 1 and "already registered" in again.stderr
    gen = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if "mlp" in k else v
             for k, v in tiny.weights.items()}
    path = write_gguf(tmp_path / "noisy.gguf", tiny.config, noisy)
    llmq(env, "model", "import", str(path), "--name", "tiny-noisy")
    itself = json.loads(llmq(env, "model", "eval", "tiny", "--base", "tiny", "--new-tokens",
                             "8", "--json").stdout)
    assert itself["kl"] < 1e-6 and itself["top1"] == 1.0 and itself["same_outputs"] == 16
    other = json.loads(llmq(env, "model", "eval", "tiny-noisy", "--base", "tiny",
                            "--new-tokens", "8", "--json").stdout)
    assert other["kl"] > 1e-3 and other["top1"] < 1.0 and other["sequences"] == 16
    stored = {m["name"]: m for m in json.loads(llmq(env, "model", "list", "--json").stdout)}
    assert stored["tiny-noisy"]["fidelity"] == {"kl": other["kl"], "top1": other["top1"]}
    missing = llmq(env, "model", "eval", "nope", check=False)
    assert missing.returncode == 1 and "no model named 'nope'" in missing.stderr
