"""How the pages show values: times in UTC, ages and durations for people, stored JSON decoded
within limits (or shown raw). Pure; Jinja2 escapes whatever these return."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .._decoding import loads
from .._errors import SerializationError
from .._run_filters import ACTIVE as ACTIVE
from .._run_filters import FINISHED as FINISHED
from .._run_filters import STATUSES as STATUSES
from .._timeline import duration


def when(value: datetime | None) -> str:
    """A timestamp as people read it in a log: UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(timezone.utc).isoformat()


def ago(value: datetime | None, now: datetime) -> str:
    """How long ago (or in how long) ``value`` is from engine time ``now``."""
    if value is None:
        return "-"
    delta = (now - value).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def since(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def pretty_json(text: str | None, total_chars: int | None = None) -> str:
    """Stored JSON text, indented when it decodes within the default limits; otherwise (too
    large, too deep, cut to the display size) the raw text with a note. Never raises."""
    if text is None:
        return "null"
    if total_chars is not None and total_chars > len(text):
        return f"{text}\n... cut: {len(text):,} of {total_chars:,} characters shown"
    try:
        value: Any = loads(text, "value")
    except SerializationError as exc:
        return f"{text}\n({exc})"
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def short(text: str | None, size: int = 120) -> str:
    """One line of at most ``size`` characters."""
    if not text:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= size else line[: size - 1] + "\u2026"


FILTERS = {
    "when": when,
    "iso": iso,
    "duration": duration,
    "pretty_json": pretty_json,
    "short": short,
}
