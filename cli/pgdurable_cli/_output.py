"""Rendering rows as terminal tables (tabulate) or as JSON, safe for the terminal.

Everything printed here may come from the database (workflow ids, names, errors, tracebacks,
inputs), written by anyone allowed to start a run. Control characters in it would let that
person drive the operator's terminal (escape sequences: clear the screen, set the title, fake
output), so they are printed as visible escapes instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import click
import psycopg
from tabulate import tabulate

# C0, DEL and C1 (C1 includes the 8-bit CSI \x9b, which some terminals obey like ESC [).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# json.dumps escapes C0 itself; with ensure_ascii=False it leaves DEL and C1 raw.
_JSON_UNESCAPED = re.compile(r"[\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with its control characters shown as escapes (``\\x1b``); ``multiline`` keeps
    newlines and tabs, for tracebacks."""
    return (_CONTROL_BUT_LINES if multiline else _CONTROL).sub(_escape, text)


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
    return str(value)


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text without a raw control character: those json.dumps leaves are \\u escapes."""
    text = json.dumps(value, indent=indent, default=_plain, ensure_ascii=False)
    return _JSON_UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def echo_json(value: Any) -> None:
    click.echo(dumps(value, indent=2))


def cell(value: Any, width: int | None = None) -> str:
    """A value as one short, terminal-safe line of a table cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        text = value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, (dict, list)):
        text = dumps(value)
    else:
        text = str(value)
    text = safe(" ".join(text.split()))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    # cell() is idempotent on its own output, so cells already shortened stay as they are.
    safe_rows = [[cell(value) for value in row] for row in rows]
    click.echo(tabulate(safe_rows, headers=list(headers), tablefmt="simple", disable_numparse=True))


def echo_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Label/value lines, aligned, skipping empty values."""
    rows = [(f"{label}:", cell(value)) for label, value in pairs if value not in (None, "")]
    click.echo(tabulate(rows, tablefmt="plain", disable_numparse=True))


def echo_text(text: str) -> None:
    """Multi-line stored text (a traceback), its lines kept, its other controls escaped."""
    click.echo(safe(text, multiline=True))
