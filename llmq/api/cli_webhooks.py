"""`llmq webhooks ...`: endpoints that are told when batches and pipeline runs end. The CLI
holds the database, so it sees every key's endpoints; `--key` makes one for a key's batches
(none: for batches made without a key, and pipeline runs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from llmq.api import webhooks as api_webhooks
from llmq.api.cli_common import emit_json, err
from llmq.api.files import InvalidRequest


def _when(unix: int | None) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S") if unix else ""


def _call(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return fn(*args, **kwargs)
    except InvalidRequest as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def webhooks() -> None:
    """Webhook endpoints: signed batch.completed/.failed/.expired/.cancelled and
    pipeline_run.completed/.failed events, retried for a day."""


@webhooks.command("add")
@click.argument("url")
@click.option("--events", required=True, metavar="E,...",
              help=f"comma-separated: {', '.join(api_webhooks.EVENT_TYPES)}")
@click.option("--key", "key_id", metavar="ID",
              help="the key whose batches it hears of (default: batches made without a key, "
              "and pipeline runs)")
@click.option("--name", help="a name for it (default: the URL's host)")
@click.option("--json", "as_json", is_flag=True)
def add(url: str, events: str, key_id: str | None, name: str | None, as_json: bool) -> None:
    """Add an endpoint and print its signing secret (shown once)."""
    wanted = [e.strip() for e in events.split(",") if e.strip()]
    made = _call(api_webhooks.create_endpoint, key_id, url=url, event_types=wanted, name=name)
    if as_json:
        emit_json({"id": made["id"], "url": made["url"], "events": made["event_types"],
                   "secret": made["signing_secret"]})
        return
    click.echo(made["signing_secret"])
    err.print(f"endpoint {made['id']} -> {url} ({', '.join(made['event_types'])}): store the "
              "secret now, it is not shown again")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Every endpoint, newest first."""
    found = api_webhooks.list_endpoints(api_webhooks.EVERY, limit=1000)["data"]
    if as_json:
        emit_json(found)
        return
    table = Table("id", "url", "events", "key", "created", "disabled")
    for e in found:
        table.add_row(e["id"], e["url"], ",".join(e["event_types"]), e["owner"] or "(no key)",
                      _when(e["created_at"]), e["disabled_reason"] or "")
    Console().print(table)


@webhooks.command("remove")
@click.argument("endpoint_id")
def remove(endpoint_id: str) -> None:
    """Delete an endpoint (its pending deliveries are dropped)."""
    api_webhooks.delete_endpoint(api_webhooks.EVERY, endpoint_id)
    err.print(f"removed {endpoint_id}")


@webhooks.command("test")
@click.argument("endpoint_id")
@click.option("--event", "event_type", default="batch.completed", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def test(endpoint_id: str, event_type: str, as_json: bool) -> None:
    """Send a test event now and print how the receiver answered."""
    result = _call(api_webhooks.test_endpoint, api_webhooks.EVERY, endpoint_id, event_type)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['event_id']}: HTTP {result['status_code']}")


@webhooks.command("rotate")
@click.argument("endpoint_id")
@click.option("--keep-old", is_flag=True, help="sign with the old secret too for 24 hours")
def rotate(endpoint_id: str, keep_old: bool) -> None:
    """Give an endpoint a new signing secret and print it."""
    made = api_webhooks.rotate_secret(api_webhooks.EVERY, endpoint_id, keep_old=keep_old)
    click.echo(made["signing_secret"])


@webhooks.command("deliveries")
@click.argument("endpoint_id", required=False)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def deliveries(endpoint_id: str | None, limit: int, as_json: bool) -> None:
    """The newest deliveries (of one endpoint, or all, --notify URLs included) and their
    attempts."""
    found = api_webhooks.deliveries(api_webhooks.EVERY, endpoint_id, limit)
    if as_json:
        emit_json(found)
        return
    table = Table("event", "type", "subject", "to", "state", "attempts", "last")
    for d in found:
        last = d["attempts"][-1] if d["attempts"] else None
        table.add_row(d["event_id"], d["event_type"], d["subject"],
                      d["endpoint_id"] or d["url"], d["state"], str(len(d["attempts"])),
                      "" if last is None else (last["error"] or f"HTTP {last['status_code']}"))
    Console().print(table)


@webhooks.command("secret")
def secret() -> None:
    """Print a new whsec_ secret (for LLMQ_WEBHOOK_SECRET, which signs --notify deliveries)."""
    from llmq.api.webhooks import new_secret

    click.echo(new_secret())
