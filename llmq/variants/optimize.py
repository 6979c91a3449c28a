"""`llmq model optimize`: base checkpoint -> calibration -> pruning -> smoothing ->
quantization -> artifact, then fidelity and speed measured and everything registered.

Pruning decides on statistics of the base model; smoothing and quantization on statistics
of the pruned model, since pruning changes the activations they must fit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llmq.engine.compress.calibrate import CalibrationStats, collect_stats
from llmq.engine.compress.distill import DistillSettings, Weights
from llmq.engine.compress.fidelity import Fidelity
from llmq.engine.compress.head import rebuild_head
from llmq.engine.compress.prune import (
    PruneRecipe,
    flops_per_token,
    params_per_token,
    prune,
    total_params,
)
from llmq.engine.compress.reconstruct import collect_grams
from llmq.engine.compress.smooth import smooth
from llmq.engine.compress.vocab import choose_tokens
from llmq.engine.config import KV_CACHE_DTYPES, ModelConfig
from llmq.engine.host.cpu import cpu_description
from llmq.engine.host.process import configure_process
from llmq.engine.host.threads import on_compute_thread
from llmq.engine.kernels import timing as kernel_timing
from llmq.engine.kernels.int8 import int8_kernel
from llmq.engine.kernels.quantized import LAYER_LINEARS, quantize_layers
from llmq.engine.kernels.rotated import (
    ROTATED_LINEARS,
    check_rotatable,
    fuses_here,
    rotatable,
    rotate_layers,
    rotate_weights,
)
from llmq.engine.model.artifact import save_variant
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.loader import Checkpoint, load_checkpoint
from llmq.engine.model.manifest import is_variant, sha256_file
from llmq.engine.model.tokenizer import TextTokenizer
from llmq.settings import get_settings
from llmq.variants import registry
from llmq.variants.evaluate import (
    evaluate_models,
    greedy_outputs,
    heldout_messages,
    measure_speed,
    shipped_messages,
)
from llmq.variants.recovery import distill_student, fingerprint, recovery_text

QUANTIZATIONS = ("none", "bf16", "int8", "int4", "fp8", "auto")  # auto: the fastest, measured here
HEAD = "lm_head"  # the output head, as --keep-float names it
CALIBRATION_NEW_TOKENS = 48  # continuations add the model's own outputs to what is measured


@dataclass(frozen=True)
class Recipe:
    prune: PruneRecipe = field(default_factory=PruneRecipe)
    quantize: str = "int8"
    smooth_alpha: float | None = 0.5  # SmoothQuant migration strength (int8 only)
    keep_float: tuple[str, ...] = ()  # linears left unquantized: "w_down" or "3.w_down"
    vocab: int = 0  # rows the output head keeps (0: the whole vocabulary; compress/vocab.py)
    # the KV cache's storage, read whole by every decode step: half the bytes of float32
    # (bench/optimize.py has the figures); attention sums in float32
    kv_cache: str = "float16"
    distill_steps: int = 0  # after pruning: steps of distillation from the base (distill.py)
    # int8 only: the QKV, gate/up and down projections quantize their input rotated by a
    # block Hadamard matrix (kernels/rotated.py): better fidelity for a little speed where the
    # rotation fuses into the norms and SwiGLU. None: wherever it applies and
    # fuses on the machine that builds (resolve_rotation)
    rotate: bool | None = False

    def validate(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ValueError(f"smoothing strength must be in [0, 1], not {self.smooth_alpha}")
        if self.distill_steps < 0:
            raise ValueError(f"distillation steps must be 0 or more, not {self.distill_steps}")
        if self.distill_steps and self.prune.empty:
            raise ValueError("distillation recovers what pruning removed: prune something "
                             "(--prune-ffn, --prune-kv-groups, --prune-layers) or drop it")
        if self.kv_cache not in KV_CACHE_DTYPES[1:]:
            raise ValueError(f"KV cache must be one of {', '.join(KV_CACHE_DTYPES[1:])}, "
                             f"not {self.kv_cache!r}")
        if self.rotate and self.quantize not in ("int8", "auto"):
            raise ValueError(f"--rotate applies to int8 layers, not to {self.quantize}")
        for name in self.keep_float:
            if self.rotate and name.rpartition(".")[2] in ROTATED_LINEARS:
                raise ValueError(f"--keep-float {name!r}: a rotated layer must be int8 "
                                 f"({', '.join(ROTATED_LINEARS)} rotate with --rotate)")
            if name != HEAD and name.rpartition(".")[2] not in LAYER_LINEARS:
                raise ValueError(f"--keep-float {name!r}: expected {HEAD} or one of "
                                 f"{', '.join(LAYER_LINEARS)}, optionally as LAYER.NAME")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        if self.quantize != "int8":
            d["smooth_alpha"] = None
            d["rotate"] = False
        return d


def recipe_with(preset_name: str = "cpu", *, quantize: str | None = None,
                smooth_alpha: float | None = None, keep_float: tuple[str, ...] = (),
                prune_ffn: float = 0.0, prune_kv_groups: int = 0,
                prune_layers: int = 0, prune_vocab: int = 0, reconstruct: bool = True,
                kv_cache: str | None = None, distill_steps: int = 0,
                rotate: bool | None = None) -> Recipe:
    """A preset with the parts a caller overrides (None, zero and empty leave the
    preset's); ``smooth_alpha=0`` turns smoothing off."""
    prune_recipe = PruneRecipe(prune_ffn, prune_kv_groups, prune_layers, reconstruct)
    updates: dict[str, Any] = {}
    if quantize is not None:
        updates["quantize"] = quantize
    if smooth_alpha is not None:
        updates["smooth_alpha"] = smooth_alpha or None
    if keep_float:
        updates["keep_float"] = tuple(keep_float)
    if not prune_recipe.empty:
        updates["prune"] = prune_recipe
    if prune_vocab:
        updates["vocab"] = prune_vocab
    if kv_cache is not None:
        updates["kv_cache"] = kv_cache
    if distill_steps:
        updates["distill_steps"] = distill_steps
    if rotate is not None:
        updates["rotate"] = rotate
    return replace(preset(preset_name), **updates)


def preset(name: str) -> Recipe:
    """The recommended recipes. ``cpu``: the precision whose linear kernels are fastest on
    the machine that builds the variant, timed at the model's shapes when it is built
    (``auto``; fp32 when no low-precision kernel clearly beats it), with SmoothQuant when
    that is int8."""
    if name != "cpu":
        raise ValueError(f"unknown preset {name!r}")
    return Recipe(quantize="auto", smooth_alpha=0.5, rotate=None)


def resolve_quantization(recipe: Recipe, config: ModelConfig, metrics: dict[str, Any],
                         log: Callable[[str], None]) -> Recipe:
    """``auto`` made concrete by timing the candidate kernels here, side by side; the
    timings and the CPU go into the manifest's metrics."""
    if recipe.quantize != "auto":
        return recipe
    timings = kernel_timing.measure(config)
    chosen = kernel_timing.fastest(timings)
    metrics["kernels"] = {"cpu": cpu_description(), "ms_per_layer": timings, "chosen": chosen,
                          "rows": kernel_timing.DECODE_ROWS, "int8_gemm": int8_kernel()}
    log("linear kernels, ms per layer at 64 rows: "
        + ", ".join(f"{k} {v:.3f}" for k, v in timings.items())
        + f" (int8 through {int8_kernel()}) -> {chosen}")
    return replace(recipe, quantize=chosen, rotate=recipe.rotate if chosen == "int8" else False)


def resolve_rotation(recipe: Recipe, config: ModelConfig, log: Callable[[str], None]) -> Recipe:
    """``rotate=None`` made concrete: rotated where the variant is int8, its widths are whole
    blocks, no rotated linear is kept in float, and the rotation fuses into its producers on
    this machine (oneDNN's int8 GEMM and the native kernel; FBGEMM's path would pay for an
    extra pass)."""
    if recipe.rotate is not None:
        return recipe
    kept = {name.rpartition(".")[2] for name in recipe.keep_float}
    reasons = [why for why, failed in (
        (f"{recipe.quantize} is not int8", recipe.quantize != "int8"),
        ("widths are not multiples of 64", not rotatable(config)),
        ("a rotated linear is kept in float", bool(kept & set(ROTATED_LINEARS))),
        ("the rotation does not fuse here", not fuses_here()),
        (f"the rotation does not fuse into {config.family}'s layers (Gemma's norms or a "
         f"GELU MLP)", config.gemma_norms or config.hidden_act != "silu")) if failed]
    if recipe.quantize == "int8":
        log("rotated int8 inputs: " + ("; ".join(f"no, {r}" for r in reasons) or "yes"))
    return replace(recipe, rotate=not reasons)


LLAMA_LAYERS = ("llama", "mistral")


def fit_family(recipe: Recipe, config: ModelConfig, log: Callable[[str], None]) -> Recipe:
    """The recipe as it applies to the checkpoint's family. Pruning and distillation edit and
    replay Llama's layers (compress/prune.py, distill.py) and are refused for the others;
    SmoothQuant folds its factors into Llama's norms, so Gemma's (x·(1 + w), and four per
    layer) go without it."""
    family = config.family
    if family not in LLAMA_LAYERS:
        if not recipe.prune.empty or recipe.distill_steps:
            raise ValueError(f"pruning and distillation are implemented for the Llama "
                             f"family's layers ({', '.join(LLAMA_LAYERS)}), not {family}'s: "
                             f"optimize a {family} model with quantization, --prune-vocab "
                             f"and --kv-cache")
    if config.gemma_norms and recipe.smooth_alpha:
        log(f"no SmoothQuant: it folds into Llama-style norms, and {family}'s are not")
        recipe = replace(recipe, smooth_alpha=None)
    return recipe


def head_scheme_for(recipe: Recipe, config: ModelConfig) -> str:
    """int8 variants get an int8 head (it re-ranks its best candidates exactly from the tied
    embedding, llmq.engine.model.head) unless ``--keep-float lm_head`` or the head is untied."""
    wanted = recipe.quantize == "int8" and HEAD not in recipe.keep_float
    return "int8" if wanted and config.tie_word_embeddings else ""


@dataclass
class Outcome:
    manifest: dict[str, Any]
    fidelity: Fidelity | None
    tokens_per_s: float | None
    base_tokens_per_s: float | None
    metrics: dict[str, Any]


def read_calibration(path: str | None) -> list[list[dict[str, Any]]]:
    """Chat messages from a JSONL file (``messages`` or ``prompt`` per line), or the set that
    ships with llmq."""
    if path is None:
        return shipped_messages("calibration_prompts.jsonl")
    chats = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            chats.append(row["messages"] if "messages" in row else
                         [{"role": "user", "content": str(row["prompt"])}])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {n}: expected a JSON object with \"messages\" or "
                             f"\"prompt\" ({exc})") from None
    if not chats:
        raise ValueError(f"{path}: no calibration prompts")
    return chats


def prune_and_recover(ckpt: Checkpoint, base_model: LlamaModel,
                      chats: list[list[dict[str, Any]]], stats: CalibrationStats,
                      recipe: Recipe, metrics: dict[str, Any], log: Callable[[str], None]
                      ) -> tuple[ModelConfig, Weights]:
    """The recipe's pruning, then its recovery: the closed-form re-fit (FFN channels or KV
    groups; layer removal has nothing to re-fit) and distillation, both on recovery text."""
    if recipe.prune.empty:
        return ckpt.config, ckpt.weights
    refits = recipe.prune.reconstruct and bool(recipe.prune.ffn or recipe.prune.kv_groups)
    text = (recovery_text(base_model, ckpt.tokenizer, chats, log)
            if refits or recipe.distill_steps else [])
    grams = collect_grams(base_model, text) if refits else None
    config, weights, report = prune(ckpt.config, ckpt.weights, stats, recipe.prune, grams)
    metrics["removed_layers"] = report.removed_layers
    if grams is not None:
        metrics["reconstruction_tokens"] = grams.positions
    log(f"pruned: {report.params_before / 1e6:.1f}M -> {report.params_after / 1e6:.1f}M "
        f"parameters, {report.flops_per_token_before / 1e6:.0f} -> "
        f"{report.flops_per_token_after / 1e6:.0f} MFLOP per token")
    if recipe.distill_steps:
        run_id = fingerprint(ckpt.config.to_hf(), recipe.as_dict(), text)
        weights, distilled = distill_student(
            config, weights, ckpt.config, ckpt.weights, text,
            DistillSettings(recipe.distill_steps), run_id, get_settings().cache_dir or None,
            log)
        metrics["distillation"] = asdict(distilled)
    return config, weights


def build(base: str, recipe: Recipe, output: Path, calibration: str | None = None,
          log: Callable[[str], None] = print) -> tuple[LlamaModel, LlamaModel, TextTokenizer,
                                                       dict[str, Any]]:
    """Writes the artifact; returns (base model, variant model, tokenizer, manifest)."""
    recipe.validate()
    base_path = registry.resolve(base)
    if is_variant(base_path):
        raise ValueError(f"{base} is already an optimized variant: optimize from its float "
                         "base instead")
    ckpt: Checkpoint = load_checkpoint(base_path, get_settings().cache_dir or None)
    recipe.prune.validate(ckpt.config)
    recipe = fit_family(recipe, ckpt.config, log)
    if recipe.rotate and recipe.prune.empty:  # refused before calibration, not after it
        check_rotatable(ckpt.config)
    base_model = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights)
    tok = ckpt.tokenizer
    chats = read_calibration(calibration)
    log(f"calibrating on {len(chats)} prompts")
    outputs = greedy_outputs(base_model, tok, chats, CALIBRATION_NEW_TOKENS)
    sequences = [tok.encode_chat_or_text(m) + out
                 for m, out in zip(chats, outputs, strict=True)]
    stats = collect_stats(base_model, sequences)
    metrics: dict[str, Any] = {"calibration_tokens": stats.tokens}
    config, weights = prune_and_recover(ckpt, base_model, chats, stats, recipe, metrics, log)
    recipe = resolve_rotation(resolve_quantization(recipe, config, metrics, log), config, log)
    if recipe.quantize == "int8" and recipe.smooth_alpha:
        if not recipe.prune.empty:  # smoothing must fit the activations of the pruned model
            stats = collect_stats(LlamaModel.from_hf_weights(config, weights), sequences)
        weights = smooth(config, weights, stats, recipe.smooth_alpha)
    if recipe.rotate:
        weights = rotate_weights(config, weights)
    config = replace(config, kv_cache_dtype=recipe.kv_cache)
    variant = LlamaModel.from_hf_weights(config, weights)
    if recipe.quantize != "none":
        quantize_layers(variant, recipe.quantize, frozenset(recipe.keep_float))
    if recipe.rotate:
        rotate_layers(variant)
    head_scheme = head_scheme_for(recipe, config)
    if recipe.vocab or head_scheme:
        kept = (choose_tokens(base_model, sequences, recipe.vocab, always=tok.base_token_ids())
                if recipe.vocab else None)
        config = rebuild_head(variant, kept, head_scheme).config
        log(f"output head: {config.head_rows} of {ckpt.config.vocab_size} rows, "
            f"{head_scheme or 'float'}")
    metrics.update(params=total_params(config), flops_per_token=flops_per_token(config),
                   params_per_token=params_per_token(config),
                   base_params=total_params(ckpt.config),
                   base_flops_per_token=flops_per_token(ckpt.config),
                   base_params_per_token=params_per_token(ckpt.config))
    # written beside the target and renamed into place, so a crash leaves no half artifact
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    manifest = save_variant(partial, variant, tok, {
        "base": base, "base_sha256": sha256_file(base_path) if base_path.is_file() else None,
        "recipe": recipe.as_dict(), "metrics": metrics,
    })
    if output.exists():
        output.rmdir()  # the caller checked that it is empty
    partial.rename(output)
    log(f"wrote {output}")
    return base_model, variant, tok, manifest


def optimize(base: str, recipe: Recipe, output: Path, calibration: str | None = None,
             measure: bool = True, log: Callable[[str], None] = print) -> Outcome:
    """Build, measure: all on one compute thread (threads.py)."""
    settings = get_settings()
    configure_process(settings.threads, settings.compile, settings.cache_dir or None,
                      settings.int8_kernel)
    return on_compute_thread(lambda: _optimize(base, recipe, output, calibration, measure,
                                               log))


def _optimize(base: str, recipe: Recipe, output: Path, calibration: str | None,
              measure: bool, log: Callable[[str], None]) -> Outcome:
    base_model, variant, tok, manifest = build(base, recipe, output, calibration, log)
    metrics = dict(manifest["metrics"])
    fid = speed = base_speed = None
    if measure:
        log(f"measuring fidelity on {len(heldout_messages())} held-out prompts")
        fid = evaluate_models(base_model, variant, tok)
        metrics.update(same_outputs=fid.same_outputs, sequences=fid.sequences,
                       mean_shared_prefix=fid.mean_shared_prefix)
        log("measuring speed (64 requests x 64 tokens, 64 slots)")
        speed = measure_speed(variant, tok)
        base_speed = measure_speed(base_model, tok)
        metrics.update(base_tokens_per_s=base_speed,
                       speed_workload="64 held-out requests x 64 tokens, 64 slots")
    return Outcome(manifest, fid, speed, base_speed, metrics)


def create_variant(base: str, name: str, recipe: Recipe, output: str | None = None,
                   calibration: str | None = None, measure: bool = True,
                   log: Callable[[str], None] = print) -> tuple[dict[str, Any], Outcome]:
    """``llmq model optimize``: builds the artifact (in ``output``, default
    LLMQ_MODEL_DIR/NAME), measures it and registers it as ``name``. Returns the registry
    row and what was measured; raises ValueError when the name or the folder is taken."""
    registry.check_name(name)  # before it names a folder
    if registry.is_registered(name):
        raise ValueError(f"a model named {name!r} is already registered")
    target = Path(output or Path(get_settings().model_dir) / name).resolve()
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target} exists and is not empty: pass --output")
    outcome = optimize(base, recipe, target, calibration, measure=measure, log=log)
    fid = outcome.fidelity
    figures: dict[str, Any] = {"metrics": outcome.metrics, "tokens_per_s": outcome.tokens_per_s}
    if fid is not None:
        figures.update(kl=fid.kl, top1=fid.top1)
    row = registry.register(name, target, base, outcome.manifest["recipe"], figures)
    return row, outcome
