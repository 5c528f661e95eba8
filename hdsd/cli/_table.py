"""The one way the listing commands print their rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click

__all__ = ["print_rows"]

Row = TypeVar("Row", bound=Mapping[str, Any])


def print_rows(rows: Iterable[Row], as_json: bool, header: str,
               line: Callable[[Row], str]) -> None:
    """One JSON object per line (``--json``: every field, for scripts), else *header* and one
    aligned *line* per row (for people)."""
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
        return
    click.echo(header)
    for row in rows:
        click.echo(line(row))
