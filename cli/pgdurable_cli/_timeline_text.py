"""`pgdurable show RUN --timeline`: the timeline the web run page draws (pgdurable._timeline),
as one line per operation with its start offset, duration, the gap before it and its attempts,
or as JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
import psycopg

from pgdurable._queries import Q
from pgdurable._timeline import Bar, Timeline, build, duration

from ._output import cell, echo_table, rows_as_dicts

MAX_OPERATIONS = 10_000  # checkpoints read; a longer history is cut, and says so
MAX_CHILDREN = 10_000


def load_timeline(
    conn: psycopg.Connection[Any], run_id: Any
) -> tuple[dict[str, Any], Timeline] | None:
    """The run's row and its timeline at engine time, or None if the run is gone."""
    found = rows_as_dicts(conn.execute(Q["cli_timeline_run"], (run_id,)))
    if not found:
        return None
    run = found[0]
    checkpoints = rows_as_dicts(
        conn.execute(Q["cli_timeline_checkpoints"], (run_id, MAX_OPERATIONS + 1))
    )
    children = rows_as_dicts(conn.execute(Q["cli_timeline_children"], (run_id, MAX_CHILDREN)))
    truncated = len(checkpoints) > MAX_OPERATIONS
    timeline = build(
        run,
        checkpoints[:MAX_OPERATIONS],
        {str(c["id"]): c for c in children},
        run["now"],
        truncated=truncated,
    )
    return run, timeline


def _offset(bar: Bar, origin: datetime | None) -> float:
    return 0.0 if origin is None else (bar.start - origin).total_seconds()


def _gap(bar: Bar) -> str:
    if bar.gap_before is None:
        return ""
    return f"{bar.gap_label or 'gap'} {duration(bar.gap_before)}"


def echo_timeline(run: dict[str, Any], timeline: Timeline) -> None:
    state = run["status"] if run["finished_at"] else f"{run['status']}, still going on"
    key = "" if run["workflow_id"] == str(run["id"]) else f" ({cell(run['workflow_id'], 60)})"
    click.echo(
        f"run {run['id']}{key} {cell(run['workflow_name'], 60)} on {cell(run['queue_name'])}: "
        f"{state}; {duration(timeline.span)} from creation to "
        f"{'its end' if run['finished_at'] else 'now'}"
    )
    echo_table(
        ["start", "took", "before it", "kind", "operation", "key", "attempts", "state", "detail"],
        [
            [
                "+" + duration(_offset(bar, timeline.origin)),
                bar.took + (" so far" if bar.open else ""),
                _gap(bar),
                bar.kind,
                cell(bar.label, 50),
                cell(bar.key, 30),
                bar.attempts or "",
                bar.state,
                cell(bar.detail, 60),
            ]
            for bar in timeline.bars
        ],
    )
    if timeline.truncated:
        click.echo(f"(only the first {MAX_OPERATIONS} operations are shown)")


def timeline_json(run: dict[str, Any], timeline: Timeline) -> dict[str, Any]:
    return {
        "run": {
            k: run[k]
            for k in ("id", "workflow_id", "workflow_name", "queue_name", "status", "attempt")
        }
        | {"created_at": run["created_at"], "finished_at": run["finished_at"], "now": run["now"]},
        "span_seconds": timeline.span,
        "truncated": timeline.truncated,
        "operations": [
            {
                "kind": bar.kind,
                "label": bar.label,
                "key": bar.key,
                "seq": bar.seq,
                "start": bar.start,
                "end": bar.end,
                "offset_seconds": _offset(bar, timeline.origin),
                "seconds": bar.seconds,
                "gap_before_seconds": bar.gap_before,
                "gap_kind": (bar.gap_label or "gap") if bar.gap_before is not None else None,
                "attempts": bar.attempts,
                "run_attempt": bar.run_attempt,
                "state": bar.state,
                "detail": bar.detail,
                "child_run_id": bar.link_run,
            }
            for bar in timeline.bars
        ],
    }
