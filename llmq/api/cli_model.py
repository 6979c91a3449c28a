"""`llmq model ...`: the registry of model variants and their measured figures."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from llmq.api import variants
from llmq.api.cli_common import emit_json, err


@click.group()
def model() -> None:
    """Model variants: list, import, optimize, evaluate."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
def model_list(as_json: bool) -> None:
    """Registered models and variants: family, parameters, context length, where the chat
    template comes from, size, fidelity against their base and speed."""
    rows = variants.list_models()
    if as_json:
        emit_json([{k: v for k, v in r.items() if k != "artifact"} for r in rows])
        return
    table = Table("name", "base", "family", "params M", "context", "template", "size MB", "KL",
                  "top-1", "tokens/s")
    for r in rows:
        f = r["fidelity"]
        m = (r["recipe"] or {}).get("model") or {}
        table.add_row(r["name"], r["base"] or "", m.get("family") or "",
                      f"{m['params'] / 1e6:.0f}" if m.get("params") else "",
                      str(m.get("context") or ""), m.get("template") or "",
                      f"{(r['size_bytes'] or 0) / 1e6:.1f}",
                      "" if f["kl"] is None else f"{f['kl']:.4f}",
                      "" if f["top1"] is None else f"{f['top1']:.1%}",
                      "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}")
    Console().print(table)


@model.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", required=True, help="the name requests and workers will use")
def model_import(path: str, name: str) -> None:
    """Register a GGUF file or a Hugging Face safetensors folder as NAME."""
    try:
        row = variants.import_model(path, name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"registered {name}: {row['artifact']} ({row['size_bytes'] / 1e6:.1f} MB)")
    click.echo(name)


@model.command("eval")
@click.argument("name")
@click.option("--base", help="compare against this variant (default: the variant's base)")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def model_eval(name: str, base: str | None, new_tokens: int, as_json: bool) -> None:
    """Measure NAME against its base on the held-out prompts that ship with llmq:
    mean KL of next-token distributions, top-1 agreement, greedy agreement."""
    try:
        result = variants.evaluate_model(name, base, new_tokens)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(result)
        return
    click.echo(f"{name} vs {result['base']}: KL {result['kl']:.4f}, top-1 {result['top1']:.1%}, "
               f"greedy outputs identical {result['same_outputs']}/{result['sequences']}, "
               f"mean shared prefix {result['mean_shared_prefix']:.1f}/{new_tokens} tokens")


@model.command("optimize")
@click.option("--from", "base", required=True, help="the float model to start from")
@click.option("--name", required=True, help="name of the new variant")
@click.option("--preset", "preset_name", type=click.Choice(["cpu"]), default="cpu",
              show_default=True,
              help="the recipe to start from (the options below override its parts)")
@click.option("--quantize",
              type=click.Choice(["none", "bf16", "int8", "int4", "fp8", "auto"]),
              help="bf16: bf16 weights and matmul inputs, float32 accumulation; int8: int8 "
                   "weights and per-token int8 activations; int4: 4-bit weights in groups of "
                   "32; fp8: e4m3 weights and per-token activations, for GPUs with fp8 tensor "
                   "cores (elsewhere correct but slow); auto: whichever of none, bf16 and "
                   "int8 has the fastest kernels here, timed at build time [default: the "
                   "preset's; cpu: auto]")
@click.option("--smooth-alpha", type=click.FloatRange(0, 1),
              help="SmoothQuant strength for int8 (0 = off) [default: 0.5]")
@click.option("--rotate/--no-rotate", default=None,
              help="int8: the QKV, gate/up and down projections quantize their input rotated "
                   "by a block Hadamard matrix (held-out KL cut to about a third; about 1% "
                   "slower where it fuses into the norms and SwiGLU, oneDNN's int8 with a C++ "
                   "compiler) [default: the preset's; cpu: where it applies and fuses]")
@click.option("--keep-float", multiple=True,
              help="a linear left unquantized: wqkv, wo, w_gate, w_up, w_down, or LAYER.NAME, "
                   "or lm_head (int8 variants otherwise get an int8 head that re-ranks its "
                   "best candidates exactly) (repeatable)")
@click.option("--prune-ffn", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="share of FFN channels removed in every layer")
@click.option("--prune-kv-groups", type=click.IntRange(min=0), default=0,
              help="KV head groups (with their query heads) removed in every layer")
@click.option("--prune-layers", type=click.IntRange(min=0), default=0,
              help="whole layers removed (the least influential on calibration prompts)")
@click.option("--prune-vocab", type=click.IntRange(min=0), default=0,
              help="rows the output head keeps: the tokens calibration text needs, then the "
                   "most frequent (0 = the whole vocabulary)")
@click.option("--reconstruct/--no-reconstruct", default=True, show_default=True,
              help="after pruning, re-fit each layer's output projection to the channels "
                   "it keeps, on the base's own text")
@click.option("--distill-steps", type=click.IntRange(min=0), default=0,
              help="after pruning, steps of distillation from the base (4 sequences each, "
                   "about 4.5 s a step on 2 CPU cores; resumable) [default: 0]")
@click.option("--kv-cache", type=click.Choice(["float32", "float16", "bfloat16", "int8"]),
              help="storage of the KV cache (int8: codes and a scale per position and head); "
                   "attention sums in float32 either way [default: float16]")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="JSONL of calibration prompts (default: the set shipped with llmq)")
@click.option("--output", type=click.Path(file_okay=False),
              help="artifact folder (default: LLMQ_MODEL_DIR/NAME)")
@click.option("--no-measure", is_flag=True, help="skip the fidelity and speed measurements")
@click.option("--exist-ok", is_flag=True, help="do nothing if NAME is already registered")
@click.option("--json", "as_json", is_flag=True)
def model_optimize(base: str, name: str, preset_name: str, quantize: str | None,
                   smooth_alpha: float | None, rotate: bool | None,
                   keep_float: tuple[str, ...], prune_ffn: float,
                   prune_kv_groups: int, prune_layers: int, prune_vocab: int,
                   reconstruct: bool, distill_steps: int, kv_cache: str | None,
                   calibration: str | None,
                   output: str | None, no_measure: bool, exist_ok: bool,
                   as_json: bool) -> None:
    """Build a pruned and/or quantized variant of a model, measure it against its base and
    register it as NAME."""
    if exist_ok and variants.model_exists(name):
        err.print(f"{name} is already registered")
        click.echo(name)
        return
    try:
        row, outcome = variants.optimize_model(
            base, name, preset=preset_name, quantize=quantize, smooth_alpha=smooth_alpha,
            rotate=rotate, keep_float=keep_float, prune_ffn=prune_ffn,
            prune_kv_groups=prune_kv_groups, prune_layers=prune_layers, prune_vocab=prune_vocab,
            reconstruct=reconstruct, distill_steps=distill_steps, kv_cache=kv_cache,
            calibration=calibration, output=output, measure=not no_measure, log=err.print)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(row)
        return
    err.print(f"registered {name}: {row['artifact']} ({row['size_bytes'] / 1e6:.1f} MB)")
    m = outcome.metrics
    err.print(f"  {m['params'] / 1e6:.1f}M parameters, {m['params_per_token'] / 1e6:.1f}M per "
              f"token ({base}: {m['base_params_per_token'] / 1e6:.1f}M), "
              f"{m['flops_per_token'] / 1e6:.0f} MFLOP per token "
              f"({base}: {m['base_flops_per_token'] / 1e6:.0f})")
    fid = outcome.fidelity
    if fid is not None and outcome.tokens_per_s is not None:
        ratio = outcome.tokens_per_s / (outcome.base_tokens_per_s or outcome.tokens_per_s)
        err.print(f"  fidelity vs {base}: KL {fid.kl:.4f}, top-1 {fid.top1:.1%}, greedy "
                  f"outputs identical {fid.same_outputs}/{fid.sequences}, mean shared prefix "
                  f"{fid.mean_shared_prefix:.1f} tokens")
        err.print(f"  speed: {outcome.tokens_per_s:.0f} tokens/s ({ratio:.2f}x {base} on the "
                  f"same run)")
    click.echo(name)
