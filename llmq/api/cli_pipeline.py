"""`llmq pipeline ...`: the summarization pipeline from the command line."""

from __future__ import annotations

import json
from datetime import timedelta

import click
from rich.console import Console
from rich.table import Table

from llmq.api import pipelines
from llmq.api.cli_common import emit_json as _emit_json
from llmq.api.cli_common import err


@click.group()
def pipeline() -> None:
    """The summarization pipeline: one summary per document, map-reduce for long ones."""


@pipeline.command("summarize")
@click.argument("source", type=click.Path(exists=True))
@click.option("--name", help="the source's name (default: the folder or file name)")
@click.option("--model", help="model variant (default: LLMQ_MODEL)")
@click.option("--local", is_flag=True, help="run here on the embedded engine, no Redis")
@click.option("--chunk-tokens", type=click.IntRange(min=32),
              help="tokens per chunk (default: what the context leaves free)")
@click.option("--overlap", type=click.IntRange(min=0), help="tokens shared by adjacent chunks")
@click.option("--slots", type=click.IntRange(min=1), help="with --local: engine slots")
@click.option("--wait", is_flag=True, help="without --local: wait for the run to complete")
@click.option("--json", "as_json", is_flag=True)
def pipeline_summarize(source: str, name: str | None, model: str | None, local: bool,
                       chunk_tokens: int | None, overlap: int | None, slots: int | None,
                       wait: bool, as_json: bool) -> None:
    """Summarize every new, changed or failed document of SOURCE (a folder of .txt/.md
    files, a JSONL of {"id", "text"}, or a CSV with id and text columns)."""
    try:
        info = pipelines.start_pipeline(
            source, name=name, model=model, chunk_tokens=chunk_tokens, overlap=overlap,
            local=local, slots=slots, wait=wait,
            on_level=lambda n: err.print(f"  running {n} requests"))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit_json(info)
        return
    click.echo(info["id"])
    c = info["counts"]
    err.print(f"{info['state']}: {info['documents']} documents, {c['succeeded']} summarized, "
              f"{c['failed']} failed, {info['requests']} requests")


@pipeline.command("runs")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def pipeline_runs(as_json: bool, limit: int) -> None:
    """List pipeline runs, newest first."""
    runs = pipelines.pipeline_runs(limit)
    if as_json:
        _emit_json(runs)
        return
    table = Table("run", "source", "state", "documents", "summarized", "failed", "requests",
                  "created")
    for r in runs:
        table.add_row(r["id"], r["source"] or "", r["state"], str(r["documents"]),
                      str(r["counts"]["succeeded"]), str(r["counts"]["failed"]),
                      str(r["requests"]), r["created_at"])
    Console().print(table)


@pipeline.command("status")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True)
def pipeline_status(run_id: str, as_json: bool) -> None:
    """A run's state, with each document's state, map-reduce level and requests."""
    info = pipelines.pipeline_status(run_id, documents=True)
    if as_json:
        _emit_json(info)
        return
    click.echo(f"{info['id']}  {info['state']}  source {info['source']}  "
               f"documents {info['documents']}  requests {info['requests']}")
    table = Table("document", "state", "level", "requests", "error")
    for d in info["document_states"]:
        table.add_row(d["document"], d["state"], str(d["level"]), str(d["requests"]),
                      d["error"] or "")
    Console().print(table)


@pipeline.command("export")
@click.argument("run_id", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "md"]), default="jsonl",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True))
def pipeline_export(run_id: str, fmt: str, output: str | None) -> None:
    """Write the summaries a run produced."""
    rows = pipelines.pipeline_summaries(run_id)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        text = f"# Summaries of run {run_id}\n" + "".join(
            f"\n## {r['document']}\n\n{r['summary']}\n" for r in rows)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        err.print(f"wrote {len(rows)} summaries to {output}")
    else:
        click.echo(text, nl=False)


@pipeline.command("schedule")
@click.option("--json", "as_json", is_flag=True)
def pipeline_schedule(as_json: bool) -> None:
    """The pipelines `llmq beat` runs, and when."""
    info = pipelines.pipeline_schedule()
    if as_json:
        _emit_json({k: info[k] for k in ("cron", "next_in_seconds", "pipelines")})
        return
    due = timedelta(seconds=info["next_in_seconds"])
    click.echo(f"cron {info['cron']} (next in {due}), timezone {info['timezone']}")
    if not info["pipelines"]:
        click.echo('no pipelines configured: set LLMQ_PIPELINES=\'[{"name": "...", '
                   '"source": "/path"}]\'')
    for p in info["pipelines"]:
        click.echo(f"  {p.get('name') or p['source']}: {p['source']} "
                   f"(model {p.get('model') or info['default_model']})")
