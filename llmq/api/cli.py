"""The ``llmq`` command line. A contract: scripts depend on its commands, options and JSON.
Commands parse their arguments, call ``llmq.api.service`` and print; they run no query and
send no task themselves. Those that run a model load torch inside the service call, so the
rest start fast and read only the database."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from llmq.api import service
from llmq.api.cli_common import emit_json as _emit_json
from llmq.api.cli_common import err, schema_default
from llmq.api.cli_http import keys, serve
from llmq.api.cli_model import model
from llmq.api.cli_pipeline import pipeline
from llmq.api.cli_webhooks import webhooks
from llmq.api.inputs import InputFileError
from llmq.db.migrate import SchemaOutOfDate
from llmq.settings import get_settings, redact_url

SCHEMA_HELP = ("JSON schema (or OpenAI response_format) for lines that set no format: their "
               "output is constrained to it")

DEVICES = click.Choice(["cpu", "gpu", "any"])
PRIORITIES = click.Choice(["low", "normal", "high"])


class LlmqGroup(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (InputFileError, service.NotFound, service.EnqueueError, SchemaOutOfDate,
                service.GenerationFailed, LookupError, service.DatabaseUrlError) as exc:
            # KeyError-style lookups quote their message; show it as written
            message = exc.args[0] if len(exc.args) == 1 else str(exc)
            raise click.ClickException(str(message)) from None
        except Exception as exc:
            message = _infrastructure_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def _infrastructure_error(exc: Exception) -> str | None:
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import OperationalError as DatabaseError

    if isinstance(exc, DatabaseError):
        first = (str(exc.orig).splitlines() or [""])[0]  # psycopg adds a hint on a line
        return f"database unavailable ({redact_url(get_settings().database_url)}): {first}"
    if isinstance(exc, BrokerError):
        return f"broker unavailable ({redact_url(get_settings().broker_url)}): {exc}"
    return None


@click.group(cls=LlmqGroup)
@click.version_option(package_name="llmq")
def main() -> None:
    """llmq: batch inference for language models."""
    show_progress()


def show_progress() -> None:
    """Progress of slow first starts (llmq.progress) as ``llmq: ...`` lines on stderr."""
    progress = logging.getLogger("llmq.progress")
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("llmq: %(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


# --- models in this process --------------------------------------------------------------

@main.command()
@click.argument("prompt")
@click.option("--model", help="model variant or path (default: LLMQ_MODEL)")
@click.option("--max-tokens", type=click.IntRange(min=1),
              help="[default: LLMQ_MAX_TOKENS, else 256]")
@click.option("--temperature", type=click.FloatRange(min=0),
              help="0 = greedy [default: LLMQ_TEMPERATURE, else 0]")
@click.option("--seed", type=int)
@click.option("--system", help="system message (default: the model's own)")
@click.option("--raw", is_flag=True, help="send PROMPT as plain text, not a chat message")
def generate(prompt: str, model: str | None, max_tokens: int | None,
             temperature: float | None, seed: int | None, system: str | None,
             raw: bool) -> None:
    """Generate a completion for PROMPT and print it as it streams."""
    try:
        service.generate(prompt, model=model, max_tokens=max_tokens, temperature=temperature,
                         seed=seed, system=system, raw=raw,
                         on_text=lambda text: click.echo(text, nl=False))
    finally:
        click.echo()


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="write the results here as JSON lines")
@click.option("--model", help="model variant (default: LLMQ_MODEL)")
@click.option("--max-tokens", type=click.IntRange(min=1))
@click.option("--temperature", type=click.FloatRange(min=0))
@click.option("--ignore-eos", is_flag=True, help="always generate max-tokens tokens")
@click.option("--slots", type=click.IntRange(min=1), help="sequences decoded together")
@click.option("--column", help="CSV column holding the prompt")
@click.option("--schema", type=click.Path(dir_okay=False, exists=True), help=SCHEMA_HELP)
def run(file: str, output: str | None, model: str | None, max_tokens: int | None,
        temperature: float | None, ignore_eos: bool, slots: int | None,
        column: str | None, schema: str | None) -> None:
    """Run FILE to the end in this process (the embedded default: no Redis, no workers)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    model = model or get_settings().model
    extra = {**({"ignore_eos": True} if ignore_eos else {}), **(schema_default(schema) or {})}
    report = service.store_batch(
        file, model=model, name=None, max_tokens=max_tokens, temperature=temperature,
        column=column, extra_defaults=extra or None)
    for r in report.rejected:
        err.print(f"[yellow]rejected[/] {r['error']}")
    err.print(f"batch {report.batch_id}: {report.accepted} requests, loading {model}...")
    columns = (TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    tokens = 0
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("run", total=report.accepted, rate="")

        def on_result(_state: str, completion_tokens: int) -> None:
            nonlocal tokens
            tokens += completion_tokens
            rate = tokens / max(1e-9, time.perf_counter() - started)
            progress.update(task, advance=1, rate=f"{rate:,.0f} tok/s")

        outcome = service.run_here(report, slots, on_result=on_result)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            n = service.write_results(report.batch_id, f)
        err.print(f"wrote {n} results to {output}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(outcome.items())) or "nothing to run"
    err.print(f"batch {report.batch_id}: {summary}, {tokens} tokens in "
              f"{time.perf_counter() - started:.1f}s")
    if not output:
        service.write_results(report.batch_id, sys.stdout)


# --- the queue ----------------------------------------------------------------------------

@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", help="model variant (default: LLMQ_MODEL)")
@click.option("--device", type=DEVICES, default="any", show_default=True)
@click.option("--priority", type=PRIORITIES, default="normal", show_default=True)
@click.option("--name", help="a name for the batch (default: the file name)")
@click.option("--max-tokens", type=click.IntRange(min=1))
@click.option("--temperature", type=click.FloatRange(min=0))
@click.option("--column", help="CSV column holding the prompt")
@click.option("--strict", is_flag=True, help="reject the whole file if any line is bad")
@click.option("--schema", type=click.Path(dir_okay=False, exists=True), help=SCHEMA_HELP)
@click.option("--notify", "notify_url", metavar="URL", help="POST a signed batch.completed "
              "(or .failed, .expired, .cancelled) event to URL when the batch ends (signed "
              "with LLMQ_WEBHOOK_SECRET)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def submit(file: str, model: str | None, device: str, priority: str, name: str | None,
           max_tokens: int | None, temperature: float | None, column: str | None,
           strict: bool, schema: str | None, notify_url: str | None, as_json: bool) -> None:
    """Store FILE's requests as a batch and queue them for the workers."""
    report = service.submit(file, model=model, device=device, priority=priority, name=name,
                            max_tokens=max_tokens, temperature=temperature, column=column,
                            strict=strict, extra_defaults=schema_default(schema),
                            notify_url=notify_url)
    if as_json:
        _emit_json(report.as_json())
        return
    for r in report.rejected:
        err.print(f"[yellow]rejected[/] {r['error']}")
    click.echo(report.batch_id)
    err.print(f"{report.accepted} accepted, {len(report.rejected)} rejected")


@main.command()
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="batches listed without BATCH")
def status(batch: str | None, as_json: bool, limit: int) -> None:
    """Show a batch's state and counts (or the latest batches)."""
    if batch:
        info = service.status(batch)
        if as_json:
            _emit_json(info)
            return
        c = info["counts"]
        click.echo(f"{info['id']}  {info['state']}  total {c['total']}  queued {c['queued']}  "
                   f"running {c['running']}  succeeded {c['succeeded']}  failed {c['failed']}  "
                   f"cancelled {c['cancelled']}")
        return
    infos = service.list_status(limit)
    if as_json:
        _emit_json(infos)
        return
    table = Table("batch", "name", "state", "total", "done", "failed", "created")
    for i in infos:
        c = i["counts"]
        table.add_row(i["id"], i["name"] or "", i["state"], str(c["total"]),
                      str(c["succeeded"]), str(c["failed"]), i["created_at"] or "")
    Console().print(table)


@main.command()
@click.argument("batch")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
def watch(batch: str, interval: float) -> None:
    """Follow a batch to its end with a live progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    info = service.status(batch)
    columns = (TextColumn("[bold]{task.fields[state]}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[counts]}"),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    first_tokens = info["completion_tokens"]
    started = time.monotonic()
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("watch", total=info["counts"]["total"], state="", counts="",
                                 rate="")
        while True:
            c = info["counts"]
            done = c["succeeded"] + c["failed"] + c["cancelled"]
            rate = (info["completion_tokens"] - first_tokens) / max(
                1e-9, time.monotonic() - started)
            progress.update(task, completed=done, state=info["state"],
                            counts=f"running {c['running']} failed {c['failed']}",
                            rate=f"{rate:,.0f} tok/s")
            if info["state"] in ("completed", "cancelled"):
                break
            time.sleep(interval)
            info = service.status(batch)
    click.echo(f"{batch} {info['state']}")


@main.command()
@click.option("--older-than", "older_than", metavar="AGE",
              help="finished batches created, and last run, longer ago than AGE (30d, 12h)")
@click.option("--batch", "batch_ids", multiple=True, metavar="ID",
              help="a finished batch to delete (repeatable); one still running is refused")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@click.option("--json", "as_json", is_flag=True)
def purge(older_than: str | None, batch_ids: tuple[str, ...], dry_run: bool,
          as_json: bool) -> None:
    """Delete finished batches with their requests, results and output files (pipeline
    documents keep their summaries)."""
    if not older_than and not batch_ids:
        raise click.UsageError("say what to purge: --older-than AGE and/or --batch ID")
    try:
        report = service.purge(older_than, batch_ids, dry_run)
    except service.InvalidAge as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    if as_json:
        _emit_json(report)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report['batches']} batches, {report['requests']} requests, "
               f"{report['files']} files")


@main.command()
@click.argument("batch")
def cancel(batch: str) -> None:
    """Cancel a batch: queued requests at once, running ones at the next engine step."""
    n = service.cancel(batch)
    click.echo(f"{batch}: cancelled {n} requests")


@main.command()
@click.argument("batch")
@click.option("--cancelled", "include_cancelled", is_flag=True,
              help="retry cancelled requests as well as failed ones")
def retry(batch: str, include_cancelled: bool) -> None:
    """Queue a batch's failed requests again."""
    n = service.retry(batch, include_cancelled)
    click.echo(f"{batch}: re-queued {n} requests")


@main.command()
@click.argument("batch")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "openai"]), default="jsonl",
              show_default=True)
def results(batch: str, output: str | None, fmt: str) -> None:
    """Write a batch's results, one JSON line per request, in input order."""
    if output:
        with open(output, "w", encoding="utf-8") as f:
            n = service.write_results(batch, f, fmt)
        err.print(f"wrote {n} lines to {output}")
    else:
        service.write_results(batch, sys.stdout, fmt)


@main.command()
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True)
def stats(batch: str | None, as_json: bool) -> None:
    """Throughput and latency percentiles of finished requests (from the database)."""
    s = service.stats(batch)
    if as_json:
        _emit_json(s)
        return
    click.echo(f"succeeded {s['succeeded']}  tokens {s['completion_tokens']}  "
               f"wall {s['wall_seconds']}s  throughput {s['tokens_per_s']} tok/s")
    table = Table("ms", "p50", "p95", "p99")
    for key, label in (("queue_wait_ms", "queue wait"), ("time_to_first_token_ms",
                                                         "time to first token"),
                       ("total_ms", "total")):
        p = s[key]
        table.add_row(label, *(str(p[k]) for k in ("p50", "p95", "p99")))
    if len(s["by_priority"]) > 1:  # per priority class, when there is more than one
        for cls, part in s["by_priority"].items():
            for key, label in (("time_to_first_token_ms", "first token"), ("total_ms", "total")):
                p = part[key]
                table.add_row(f"{label} ({cls}, {part['succeeded']})",
                              *(str(p[k]) for k in ("p50", "p95", "p99")))
    Console().print(table)


# --- operators ----------------------------------------------------------------------------

@main.command()
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="auto",
              show_default=True)
@click.option("--model", help="model variant this worker serves (default: LLMQ_MODEL)")
@click.option("--slots", type=click.IntRange(min=1), help="sequences decoded together")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="feeder threads (default: enough messages to fill the slots twice)")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(device: str, model: str | None, slots: int | None, concurrency: int | None,
           loglevel: str) -> None:
    """Run a worker: one engine serving one model variant, fed by that variant's queues for
    its device and for any device (plus the control queue of the pipeline's driver)."""
    service.run_worker(device, model, slots, concurrency, loglevel, announce=err.print)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    url = service.upgrade_database(revision)
    click.echo(f"database at {revision}: {url}")


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the scheduler that starts the configured pipelines (LLMQ_PIPELINE_CRON)."""
    service.run_beat(loglevel)


main.add_command(pipeline)
main.add_command(model)
main.add_command(serve)
main.add_command(keys)
main.add_command(webhooks)

if __name__ == "__main__":
    main()
