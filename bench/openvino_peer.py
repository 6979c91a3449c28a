"""OpenVINO GenAI as a peer in bench/optimize.py, run from a virtual environment of its own
(``--openvino PYTHON``; about 2 GB of packages, kept apart from llmq's .venv):

    python3 -m venv /tmp/ov && /tmp/ov/bin/pip install torch==2.13.0 \\
        && /tmp/ov/bin/pip install openvino-genai "optimum-intel[openvino]" torch==2.13.0 \\
        && /tmp/ov/bin/pip uninstall -y torchvision  # PyPI's fails beside this torch

The same GGUF weights as llmq's, unpacked by llmq's loader into a Hugging Face folder, are
exported once with optimum-intel (int8 weights, and fp32) under bench/.variants/, as
../shared/bench/README.md describes; the prompts reach OpenVINO as llmq's token ids."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.common import workload

# row name -> (exported weights, inference precision hint, KV cache precision)
RUNS = {
    "OpenVINO GenAI int8 weights, f32 precision": ("int8", "f32", None),
    "OpenVINO GenAI int8 weights, default precision": ("int8", None, None),
    "OpenVINO GenAI fp32, f32 precision and KV cache": ("fp32", "f32", "f32"),
}


def export(python: str, hf: Path, variants_dir: Path) -> dict[str, Path]:
    """The folders exported from the Hugging Face folder ``hf``, made when missing."""
    cli = str(Path(python).parent / "optimum-cli")
    out = {}
    for fmt in ("int8", "fp32"):
        folder = variants_dir / f"openvino-{fmt}"
        if not (folder / "openvino_model.xml").is_file():
            subprocess.run([cli, "export", "openvino", "--model", str(hf), "--task",
                            "text-generation-with-past", "--weight-format", fmt, str(folder)],
                           check=True)
        out[fmt] = folder
    return out


def unpacked(model: str, variants_dir: Path) -> tuple[Path, list[list[int]]]:
    """The built-in ``model``'s GGUF unpacked by llmq's loader into a Hugging Face folder,
    and the workload's prompts as llmq's token ids (chats, or their text for a model
    without a chat template)."""
    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants.registry import builtin_model_path

    hf_cache = variants_dir / "hf-cache"
    tok = load_checkpoint(builtin_model_path(model), hf_cache).tokenizer
    hf = next(p for p in hf_cache.iterdir() if (p / "config.json").is_file())
    return hf, [tok.encode_chat_or_text(p["messages"]) for p in workload()]


def configs(python: str, variants_dir: Path, slots: int = 64,
            model: str = "smollm2-135m") -> dict[str, dict]:
    """bench/optimize.py's configurations for the OpenVINO rows."""
    hf, ids = unpacked(model, variants_dir)
    folders = export(python, hf, variants_dir)
    return {name: {"engine": "openvino", "python": python, "model_dir": str(folders[fmt]),
                   "precision": precision, "kv_precision": kv, "slots": slots,
                   "prompt_ids": ids}
            for name, (fmt, precision, kv) in RUNS.items()}
