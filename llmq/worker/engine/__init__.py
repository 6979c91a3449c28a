"""The model and everything that runs it. Pure PyTorch: knows nothing of Celery, SQL or HTTP.

Names are imported lazily, so that the torch-free parts (files, tokenizer, scheduler) can be
used without loading PyTorch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "GenerationRequest": "engine",
    "GenerationResult": "engine",
    "SamplingParams": "sampling",
    "load_checkpoint": "loader",
    "ModelNotFoundError": "files",
    "resolve_model_path": "files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{module}", __name__), name)
