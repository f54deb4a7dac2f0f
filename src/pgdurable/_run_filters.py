"""The filters of a runs listing as people type them: a status, a time as ISO 8601 or as an age
(15m, 2h, 7d), and the keyset cursor (created_at|id) that pages through runs newest first. Pure,
so the web runs page and the CLI's `pgdurable runs` read the same input the same way."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

# A run's statuses (runs_status_check), unfinished ones first.
STATUSES = (
    "pending",
    "running",
    "sleeping",
    "waiting",
    "paused",
    "completed",
    "failed",
    "cancelled",
)
ACTIVE = frozenset(STATUSES[:5])
FINISHED = frozenset(STATUSES[5:])

_RELATIVE = re.compile(r"^(\d{1,6})\s*(s|m|min|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class BadFilter(ValueError):
    """A filter of a runs listing that cannot be read; the message says what to type."""


def parse_time(name: str, text: str, now: datetime) -> datetime:
    """ISO 8601 (UTC unless it names an offset), or an age such as 15m, 2h, 7d (before now)."""
    match = _RELATIVE.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise BadFilter(
            f"{name}: {text[:50]!r} is not a time: give 2025-01-31T12:00 (UTC) or an age "
            "such as 15m, 2h, 7d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def is_age(text: str) -> bool:
    """Whether ``text`` is an age (15m) rather than a point in time: it needs the clock."""
    return _RELATIVE.match(text.strip().lower()) is not None


def parse_cursor(
    name: str,
    text: str,
    how: str = "pass the cursor the previous page printed (<created_at>|<run id>)",
) -> tuple[datetime, uuid.UUID]:
    """A page cursor, ``<created_at ISO>|<run id>``, as cursor_of writes it; ``how`` tells
    where a good one comes from."""
    at, _, run_id = text.rpartition("|")
    try:
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError(at)
        return parsed, uuid.UUID(run_id)
    except ValueError:
        raise BadFilter(
            f"{name}: {text[:80]!r} is not a page cursor: {how}, or start again from the first page"
        ) from None


def cursor_of(row: dict[str, Any]) -> str:
    """The cursor of the page that starts below ``row`` (a run with created_at and id)."""
    return f"{row['created_at'].isoformat()}|{row['id']}"


def search_id(text: str | None) -> uuid.UUID | None:
    """The run id a search text names exactly, if it is one."""
    if not text:
        return None
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None
