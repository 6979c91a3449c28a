"""Variant artifacts as files, without torch: how one is recognised and checked against its
manifest. The registry and the CLI use this module alone; artifact.py reads and writes the
tensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "llmq-manifest.json"  # marks a folder as an llmq variant artifact
FORMAT = "llmq-variant"
VERSION = 1


class ArtifactError(ValueError):
    pass


def is_variant(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{folder}: unreadable {MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"{folder}: not an {FORMAT} v{VERSION} artifact")
    return manifest


def verify(folder: Path) -> None:
    """Checks every file the manifest lists against its sha256, and that it lists only files
    inside the folder."""
    for name, want in read_manifest(folder)["files"].items():
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents:
            raise ArtifactError(f"{folder}: the manifest names a file outside it: {name!r}")
        if not path.is_file() or sha256_file(path) != want:
            raise ArtifactError(f"{folder / name}: contents do not match the manifest")
