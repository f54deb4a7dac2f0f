"""Rendering rows as terminal tables (tabulate) or as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import click
import psycopg
from tabulate import tabulate


def rows_as_dicts(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_plain, ensure_ascii=False))


def cell(value: Any, width: int | None = None) -> str:
    """A value as one short line of a table cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        text = value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=_plain)
    else:
        text = str(value)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    click.echo(tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True))


def echo_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Label/value lines, aligned, skipping empty values."""
    rows = [(f"{label}:", cell(value)) for label, value in pairs if value not in (None, "")]
    click.echo(tabulate(rows, tablefmt="plain", disable_numparse=True))
