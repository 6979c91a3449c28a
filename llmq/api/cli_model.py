"""`llmq model ...`: the registry of model variants and their measured figures."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from llmq.api.cli_common import emit_json, err
from llmq.db import variants
from llmq.db.migrate import ensure_schema
from llmq.db.session import session_scope
from llmq.worker.engine.files import BUILTIN_MODELS, builtin_model_path


def _ensure_builtins() -> None:
    """Built-in models appear in the registry once their wheel is installed."""
    ensure_schema()
    with session_scope() as session:
        for name in BUILTIN_MODELS:
            if variants.get(session, name) is None:
                try:
                    path = builtin_model_path(name)
                except LookupError:
                    continue
                variants.register(session, name, path, None,
                                  {"source": "built-in", "format": path.suffix.lstrip(".")})


@click.group()
def model() -> None:
    """Model variants: list, import, evaluate."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
def model_list(as_json: bool) -> None:
    """Registered variants with size, fidelity against their base and speed."""
    _ensure_builtins()
    with session_scope() as session:
        rows = [variants.as_json(v) for v in variants.all_variants(session)]
    if as_json:
        emit_json([{k: v for k, v in r.items() if k != "artifact"} for r in rows])
        return
    table = Table("name", "base", "size MB", "KL", "top-1", "tokens/s")
    for r in rows:
        f = r["fidelity"]
        table.add_row(r["name"], r["base"] or "", f"{(r['size_bytes'] or 0) / 1e6:.1f}",
                      "" if f["kl"] is None else f"{f['kl']:.4f}",
                      "" if f["top1"] is None else f"{f['top1']:.1%}",
                      "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}")
    Console().print(table)


@model.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", required=True, help="the name requests and workers will use")
def model_import(path: str, name: str) -> None:
    """Register a GGUF file or a Hugging Face safetensors folder as NAME."""
    from llmq.worker.engine.tokenizer import load_tokenizer

    artifact = Path(path).resolve()
    if not (artifact.suffix == ".gguf" or (artifact / "config.json").is_file()):
        raise click.ClickException(f"{path}: expected a .gguf file or a folder with "
                                   "config.json and *.safetensors")
    try:
        load_tokenizer(artifact)  # fails early on a file we could not serve
    except Exception as exc:
        raise click.ClickException(f"{path}: cannot read its tokenizer: {exc}") from None
    _ensure_builtins()
    fmt = "gguf" if artifact.suffix == ".gguf" else "safetensors"
    with session_scope() as session:
        try:
            v = variants.register(session, name, artifact, None,
                                  {"source": "imported", "format": fmt})
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        err.print(f"registered {name}: {artifact} ({v.size_bytes / 1e6:.1f} MB)")
    click.echo(name)


@model.command("eval")
@click.argument("name")
@click.option("--base", help="compare against this variant (default: the variant's base)")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def model_eval(name: str, base: str | None, new_tokens: int, as_json: bool) -> None:
    """Measure NAME against its base on the held-out prompts that ship with llmq:
    mean KL of next-token distributions, top-1 agreement, greedy agreement."""
    from llmq.worker.model_eval import evaluate

    _ensure_builtins()
    with session_scope() as session:
        v = variants.get(session, name)
        if v is None:
            raise click.ClickException(f"no model named {name!r}")
        base = base or v.base
    if not base:
        raise click.ClickException(f"{name} has no base to compare with: pass --base")
    fid = evaluate(name, base, new_tokens)
    with session_scope() as session:
        v = variants.get(session, name)
        if v is not None:
            v.kl, v.top1 = fid.kl, fid.top1
    result = {"name": name, "base": base, "kl": fid.kl, "top1": fid.top1,
              "same_outputs": fid.same_outputs, "mean_shared_prefix": fid.mean_shared_prefix,
              "sequences": fid.sequences, "new_tokens": new_tokens}
    if as_json:
        emit_json(result)
        return
    click.echo(f"{name} vs {base}: KL {fid.kl:.4f}, top-1 {fid.top1:.1%}, greedy outputs "
               f"identical {fid.same_outputs}/{fid.sequences}, mean shared prefix "
               f"{fid.mean_shared_prefix:.1f}/{new_tokens} tokens")
