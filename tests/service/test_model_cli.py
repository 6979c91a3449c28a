"""`llmq model`: the registry and the fidelity of a variant against its base."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from llmq.db.migrate import upgrade
from tests.conftest import Tiny
from tests.engine.tiny import write_gguf

from .workers import Worker, count_rows, llmq, llmq_json, wait_finished


def test_list_import_and_eval(tiny: Tiny, tmp_path: Path) -> None:
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}", "LLMQ_THREADS": "1"}
    listed = json.loads(llmq(env, "model", "list", "--json").stdout)
    builtin = next(m for m in listed if m["name"] == "smollm2-135m")
    assert builtin["size_bytes"] > 90_000_000 and set(builtin) >= {
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


def test_optimize_registers_a_measured_variant_and_workers_serve_it_by_name(
        tiny: Tiny, llmq_env: dict[str, str], tmp_path: Path) -> None:
    env = {**llmq_env, "LLMQ_MODEL_DIR": str(tmp_path / "models"), "LLMQ_COMPILE": "0",
           "LLMQ_MODEL": "tiny"}
    upgrade()  # a server database is migrated by its operator, not by the CLI
    llmq(env, "model", "import", str(tiny.gguf), "--name", "tiny")
    made = json.loads(llmq(env, "model", "optimize", "--from", "tiny", "--name", "tiny-q",
                           "--quantize", "int8", "--prune-ffn", "0.3", "--no-reconstruct",
                           "--json").stdout)
    assert made["name"] == "tiny-q" and made["base"] == "tiny"
    assert made["recipe"]["quantize"] == "int8" and made["recipe"]["prune"]["ffn"] == 0.3
    assert made["recipe"]["prune"]["reconstruct"] is False  # tested in tests/engine: slower
    assert 0 < made["fidelity"]["kl"] and 0 < made["fidelity"]["top1"] <= 1
    assert made["tokens_per_s"] > 0 and made["metrics"]["params"] < made["metrics"][
        "base_params"]
    artifact = Path(made["artifact"])
    assert (artifact / "llmq-manifest.json").is_file()
    assert made["size_bytes"] == sum(f.stat().st_size for f in artifact.iterdir())
    listed = {m["name"]: m for m in json.loads(llmq(env, "model", "list", "--json").stdout)}
    assert listed["tiny-q"]["fidelity"] == made["fidelity"]
    again = llmq(env, "model", "optimize", "--from", "tiny", "--name", "tiny-q", check=False)
    assert again.returncode == 1 and "already registered" in again.stderr
    bad = llmq(env, "model", "optimize", "--from", "tiny", "--name", "x", "--prune-kv-groups",
               "2", check=False)
    assert bad.returncode == 1 and "KV groups" in bad.stderr and "Traceback" not in bad.stderr
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text('{"prompt": "fine"}\n{"text": "no prompt here"}\n')
    bad = llmq(env, "model", "optimize", "--from", "tiny", "--name", "x", "--calibration",
               str(calibration), check=False)
    assert bad.returncode == 1 and "line 2" in bad.stderr and "Traceback" not in bad.stderr
    # an artifact moved to another registry keeps its base and recipe
    other = {**env, "LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    llmq(other, "model", "import", str(artifact), "--name", "copied")
    copied = {m["name"]: m for m in json.loads(llmq(other, "model", "list", "--json").stdout)}
    assert copied["copied"]["base"] == "tiny"
    assert copied["copied"]["recipe"]["quantize"] == "int8"
    tampered = tmp_path / "tampered"
    shutil.copytree(artifact, tampered)
    with (tampered / "model.safetensors").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    refused = llmq(other, "model", "import", str(tampered), "--name", "tampered", check=False)
    assert refused.returncode == 1 and "do not match the manifest" in refused.stderr
    for name in ("../escape", "a/b", ".hidden"):
        bad = llmq(env, "model", "optimize", "--from", "tiny", "--name", name, check=False)
        assert bad.returncode == 1 and "not a plain name" in bad.stderr, name
    assert not (tmp_path / "escape").exists()
    requests_run_only_on_the_variant_they_name(env, tmp_path)


def requests_run_only_on_the_variant_they_name(env: dict[str, str], tmp_path: Path) -> None:
    """With a worker for tiny-q alone, the batch for tiny waits in its own queue until a
    worker for tiny starts."""
    batches = {}
    for model in ("tiny-q", "tiny"):
        lines = tmp_path / f"{model}.jsonl"
        lines.write_text("".join(json.dumps({"prompt": f"Say {i}", "max_tokens": 4}) + "\n"
                                 for i in range(6)))
        batches[model] = json.loads(llmq(env, "submit", str(lines), "--model", model,
                                         "--json").stdout)["batch_id"]
    first = Worker(env, tmp_path / "q.log", "--model", "tiny-q")
    try:
        first.wait_ready()
        assert wait_finished(env, batches["tiny-q"])["state"] == "completed"
        time.sleep(2)  # time enough for a wrongly routed message to be taken
        assert llmq_json(env, "status", batches["tiny"], "--json")["counts"]["queued"] == 6
    finally:
        first.stop()
    second = Worker(env, tmp_path / "base.log", "--model", "tiny")
    try:
        second.wait_ready()
        assert wait_finished(env, batches["tiny"])["state"] == "completed"
    finally:
        second.stop()
    for batch in batches.values():
        rows = [json.loads(x) for x in llmq(env, "results", batch).stdout.splitlines()]
        assert [r["status"] for r in rows] == ["succeeded"] * 6
    joined = ("SELECT count(*) FROM results r JOIN requests q ON q.id = r.request_id "
              "JOIN batches b ON b.id = q.batch_id WHERE ")
    assert count_rows(joined + "r.model = b.model") == 12
    assert count_rows(joined + "r.model <> b.model") == 0

