"""What the command modules share: the stderr console and JSON output."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

err = Console(stderr=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))
