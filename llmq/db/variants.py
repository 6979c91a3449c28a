"""The model registry: named variants with their artifact, recipe and measured figures."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ModelVariant


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a folder's files in name order."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    size = 0
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def get(session: Session, name: str) -> ModelVariant | None:
    return session.execute(select(ModelVariant).where(ModelVariant.name == name)
                           ).scalar_one_or_none()


def register(session: Session, name: str, path: Path, base: str | None,
             recipe: dict[str, Any]) -> ModelVariant:
    if get(session, name) is not None:
        raise ValueError(f"a model named {name!r} is already registered")
    sha, size = file_digest(path)
    variant = ModelVariant(name=name, base=base, recipe=recipe, artifact_path=str(path),
                           artifact_sha256=sha, size_bytes=size)
    session.add(variant)
    session.flush()
    return variant


def artifact_path(session: Session, name: str) -> str | None:
    return session.execute(select(ModelVariant.artifact_path)
                           .where(ModelVariant.name == name)).scalar_one_or_none()


def set_figures(v: ModelVariant, *, kl: float | None = None, top1: float | None = None,
                tokens_per_s: float | None = None,
                metrics: dict[str, Any] | None = None) -> None:
    """Stores what was measured; figures not given keep their values."""
    if kl is not None:
        v.kl = kl
    if top1 is not None:
        v.top1 = top1
    if tokens_per_s is not None:
        v.tokens_per_s = tokens_per_s
    if metrics is not None:
        v.metrics = metrics


def all_variants(session: Session) -> list[ModelVariant]:
    return list(session.execute(select(ModelVariant).order_by(ModelVariant.created_at))
                .scalars())


def as_json(v: ModelVariant) -> dict[str, Any]:
    return {"name": v.name, "base": v.base, "recipe": v.recipe, "size_bytes": v.size_bytes,
            "fidelity": {"kl": v.kl, "top1": v.top1}, "tokens_per_s": v.tokens_per_s,
            "metrics": v.metrics or {}, "artifact": v.artifact_path,
            "created_at": v.created_at.isoformat() + "Z" if v.created_at else None}
