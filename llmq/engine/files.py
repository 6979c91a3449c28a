"""How a variant artifact is recognised, without torch: the CLI and the registry look at
folders with this module alone; artifact.py reads and writes them."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "llmq-manifest.json"  # marks a folder as an llmq variant artifact


def is_variant(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()
