"""The runs page: its filters read from the query string (checked, with messages that say what
to type), keyset cursors on (created_at, id), and the counts by status."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from .._run_filters import ACTIVE, FINISHED, STATUSES, parse_cursor
from .._run_filters import BadFilter as BadFilter  # re-exported: _pages catches it
from .._run_filters import parse_time as _time
from ._store import Reader

MAX_TEXT = 200
FINISHED_WINDOW = timedelta(hours=1)  # finished runs counted: recent, and cheap at any volume


def _text(name: str, params: Mapping[str, str]) -> str | None:
    value = params.get(name, "").strip()
    if len(value) > MAX_TEXT:
        raise BadFilter(f"{name}: at most {MAX_TEXT} characters")
    return value or None


def _cursor(name: str, text: str | None) -> tuple[datetime, uuid.UUID] | None:
    return parse_cursor(name, text, "follow the Older / Newer links") if text else None


@dataclass(frozen=True)
class RunFilter:
    """What the runs page shows: the filters as typed (kept for the form and links) and the
    keyset cursor (``before``: older than; ``after``: newer than)."""

    status: str | None = None
    workflow: str | None = None
    queue: str | None = None
    since: str | None = None
    until: str | None = None
    search: str | None = None
    before: str | None = None
    after: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RunFilter:
        status = _text("status", params)
        if status is not None and status not in STATUSES:
            raise BadFilter(f"status: {status[:30]!r} is not one of {', '.join(STATUSES)}")
        found = cls(
            status=status,
            workflow=_text("workflow", params),
            queue=_text("queue", params),
            since=_text("since", params),
            until=_text("until", params),
            search=_text("q", params),
            before=_text("before", params),
            after=_text("after", params),
        )
        _cursor("before", found.before)
        _cursor("after", found.after)
        return found

    def sql(self, now: datetime, limit: int) -> dict[str, Any]:
        """The parameters of runs_older / runs_newer."""
        since = _time("since", self.since, now) if self.since else None
        until = _time("until", self.until, now) if self.until else None
        cursor = _cursor("after", self.after) if self.after else _cursor("before", self.before)
        search_id = None
        if self.search:
            with contextlib.suppress(ValueError):
                search_id = uuid.UUID(self.search)
        return {
            "status": self.status,
            "workflow": self.workflow,
            "queue": self.queue,
            "since": since,
            "until": until,
            "search": self.search,
            "search_id": search_id,
            "cursor_at": cursor[0] if cursor else None,
            "cursor_id": cursor[1] if cursor else None,
            "limit": limit,
        }

    def query(self, **changes: str | None) -> str:
        """The query string of this filter with ``changes``, without empty fields."""
        moved = replace(self, **changes)
        fields = {
            "status": moved.status,
            "workflow": moved.workflow,
            "queue": moved.queue,
            "since": moved.since,
            "until": moved.until,
            "q": moved.search,
            "before": moved.before,
            "after": moved.after,
        }
        return urlencode({k: v for k, v in fields.items() if v})

    @property
    def active(self) -> bool:
        return any((self.status, self.workflow, self.queue, self.since, self.until, self.search))


def cursor_of(row: dict[str, Any]) -> str:
    return f"{row['created_at'].isoformat()}|{row['id']}"


@dataclass
class Page:
    rows: list[dict[str, Any]]
    older: str | None  # query string of the next (older) page, None on the last one
    newer: str | None  # query string of the previous (newer) page, None on the first one


def fetch_page(db: Reader, flt: RunFilter, size: int) -> Page:
    """One page of runs, newest first, by keyset: the query reads ``size + 1`` rows from the
    cursor to know whether a page follows, whatever the depth."""
    params = flt.sql(db.now, size + 1)
    if flt.after:
        rows = db.rows("runs_newer", params)
        more_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        more_older = True
    else:
        rows = db.rows("runs_older", params)
        more_older = len(rows) > size
        rows = rows[:size]
        more_newer = flt.before is not None
    older = flt.query(before=cursor_of(rows[-1]), after=None) if rows and more_older else None
    newer = flt.query(after=cursor_of(rows[0]), before=None) if rows and more_newer else None
    if not rows and (flt.before or flt.after):
        newer = flt.query(before=None, after=None)  # fell off an end: back to the first page
    return Page(rows, older, newer)


def status_counts(db: Reader, flt: RunFilter) -> list[dict[str, Any]]:
    """Counts by status for the filter's workflow and queue: active statuses whole, finished
    ones over the last hour; each with the runs-page link that lists them."""
    since = db.now - FINISHED_WINDOW
    found: dict[str, int] = {}
    params = {"workflow": flt.workflow, "queue": flt.queue, "finished_since": since}
    for r in db.rows("status_counts", params):
        found[r["status"]] = found.get(r["status"], 0) + r["count"]
    out = []
    for status in STATUSES:
        scope = RunFilter(workflow=flt.workflow, queue=flt.queue, status=status)
        if status in FINISHED:
            scope = replace(scope, since="1h")
        out.append(
            {
                "status": status,
                "count": found.get(status, 0),
                "window": "" if status in ACTIVE else "1 h",
                "query": scope.query(),
            }
        )
    return out
