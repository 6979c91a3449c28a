"""`llmq serve` and `llmq keys ...`: the HTTP API and the keys that open it."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from llmq.api import keys as api_keys
from llmq.api.cli_common import emit_json, err
from llmq.settings import get_settings

KEEP_ALIVE_SECONDS = 5  # an idle kept-alive connection is closed after it
HEADER_BYTES = 16 << 10  # a request whose headers pass this is refused (uvicorn: h11)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", "processes", default=1, show_default=True,
              type=click.IntRange(min=1), help="server processes")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, processes: int, log_level: str) -> None:
    """Serve the OpenAI Files and Batches API (and completions, /metrics, /healthz) under
    /v1. Every /v1 call needs `Authorization: Bearer KEY` (see `llmq keys create`)."""
    import uvicorn

    from llmq.api.http.app import OpenModeRefused, check_binding
    from llmq.db.migrate import ensure_schema

    try:
        check_binding(host)
    except OpenModeRefused as exc:
        raise click.ClickException(str(exc)) from None
    # a bad URL or a database that is down: one line here (cli.LlmqGroup), not a traceback
    # from the server's start-up
    ensure_schema()
    err.print(f"llmq API on http://{host}:{port}/v1 (schema: /openapi.json)")
    # uvicorn's own limits, set here rather than left to its defaults: connections per
    # process (503 beyond), idle keep-alive, and the bytes of a request's headers
    uvicorn.run("llmq.api.http.app:create_app", factory=True, host=host, port=port,
                workers=processes, log_level=log_level,
                limit_concurrency=get_settings().api_max_connections,
                timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=HEADER_BYTES)


@click.group()
def keys() -> None:
    """API keys of `llmq serve`: only a hash is stored, the key is shown once."""


@keys.command("create")
@click.option("--name", required=True, help="who or what the key is for")
@click.option("--admin", is_flag=True, help="the status page shows this key every key's "
              "work and the workers")
@click.option("--json", "as_json", is_flag=True)
def keys_create(name: str, admin: bool, as_json: bool) -> None:
    """Create a key and print it (it cannot be shown again)."""
    key = api_keys.create_key(name, admin)
    if as_json:
        emit_json(key)
        return
    click.echo(key["key"])
    err.print(f"{'admin ' if admin else ''}key {key['id']} ({name}): store it now, it is not "
              "shown again")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """Keys by id and name (never the keys themselves)."""
    rows = api_keys.list_keys()
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "name", "admin", "created", "revoked")
    for r in rows:
        table.add_row(r["id"], r["name"], "yes" if r["admin"] else "", r["created_at"],
                      r["revoked_at"] or "")
    Console().print(table)


@keys.command("usage")
@click.option("--days", type=click.IntRange(1, 3660), default=30, show_default=True,
              help="days back from today (UTC), today included")
@click.option("--key", "key_id", help="one key's id (default: every key, and batches made "
              "without one)")
@click.option("--json", "as_json", is_flag=True)
def keys_usage(days: int, key_id: str | None, as_json: bool) -> None:
    """Tokens per key per day (UTC), from the results written."""
    rows = api_keys.usage(days, key_id) if key_id else api_keys.usage(days)
    if as_json:
        emit_json(rows)
        return
    table = Table("date", "key", "requests", "input", "cached", "output", "total")
    for r in rows:
        table.add_row(r["date"], r["key_id"] or "(no key)", str(r["requests"]),
                      str(r["input_tokens"]), str(r["cached_tokens"]),
                      str(r["output_tokens"]), str(r["total_tokens"]))
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: calls with it are refused from now on (401)."""
    api_keys.revoke_key(key_id)
    err.print(f"revoked {key_id}")
