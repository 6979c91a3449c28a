"""Model variants as service functions: list, import, evaluate and build them. Everything but
the listing loads torch, inside the function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def list_models() -> list[dict[str, Any]]:
    from llmq.variants.registry import list_models as rows

    return rows()


def model_exists(name: str) -> bool:
    from llmq.variants.registry import is_registered

    return is_registered(name)


def import_model(path: str, name: str) -> dict[str, Any]:
    from llmq.variants.registry import import_model as register

    return register(path, name)


def evaluate_model(name: str, base: str | None = None, new_tokens: int = 64) -> dict[str, Any]:
    """Fidelity of NAME against its base, measured here and stored (loads torch)."""
    from llmq.variants.evaluate import evaluate_and_record

    return evaluate_and_record(name, base, new_tokens)


def optimize_model(base: str, name: str, *, preset: str = "cpu", quantize: str | None = None,
                   smooth_alpha: float | None = None, rotate: bool | None = None,
                   keep_float: tuple[str, ...] = (), prune_ffn: float = 0.0,
                   prune_kv_groups: int = 0, prune_layers: int = 0, prune_vocab: int = 0,
                   reconstruct: bool = True, kv_cache: str | None = None,
                   distill_steps: int = 0, calibration: str | None = None,
                   output: str | None = None, measure: bool = True,
                   log: Callable[[str], None] = print) -> tuple[dict[str, Any], Any]:
    """Builds, measures and registers a variant (loads torch); returns its registry row and
    the measurements (``llmq.variants.optimize.Outcome``)."""
    from llmq.variants.optimize import create_variant, recipe_with

    recipe = recipe_with(preset, quantize=quantize, smooth_alpha=smooth_alpha, rotate=rotate,
                         keep_float=keep_float, prune_ffn=prune_ffn,
                         prune_kv_groups=prune_kv_groups, prune_layers=prune_layers,
                         prune_vocab=prune_vocab, reconstruct=reconstruct, kv_cache=kv_cache,
                         distill_steps=distill_steps)
    return create_variant(base, name, recipe, output, calibration, measure, log)
