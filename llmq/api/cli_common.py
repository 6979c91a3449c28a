"""What the command modules share: the stderr console and JSON output."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

err = Console(stderr=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


def schema_default(path: str | None) -> dict[str, Any] | None:
    """``--schema FILE``: the response format of lines that set none. FILE holds a JSON
    schema, OpenAI's ``json_schema`` member (``{"name", "schema", "strict"}``) or a whole
    ``response_format``; a format that cannot be compiled is refused before anything is
    stored."""
    from pydantic import ValidationError

    from llmq.contract import SamplingOverrides, explain

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            given = json.load(f)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--schema") from None
    if not isinstance(given, dict):
        raise click.BadParameter(f"{path}: not a JSON object", param_hint="--schema")
    if "type" in given and given["type"] in ("json_schema", "json_object", "regex", "choice"):
        fmt = given
    elif "schema" in given and "name" in given:
        fmt = {"type": "json_schema", "json_schema": given}
    else:
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in
                       path.rsplit("/", 1)[-1].rsplit(".", 1)[0])[:64] or "schema"
        fmt = {"type": "json_schema",
               "json_schema": {"name": name, "schema": given, "strict": True}}
    try:
        overrides = SamplingOverrides.model_validate({"response_format": fmt})
    except ValidationError as exc:
        raise click.BadParameter(f"{path}: {explain(exc)}", param_hint="--schema") from None
    return overrides.model_dump(mode="json", by_alias=True, include={"response_format"})
