"""`pgdurable workers`, `pgdurable workflows` and `pgdurable audit`: who serves what, and who did
what (pgdurable.audit_log, written by every action of the CLI and the web dashboard)."""

from __future__ import annotations

from typing import Any

import click

from pgdurable._queries import Q
from pgdurable._run_filters import parse_time, search_id
from pgdurable._starting import run_key
from pgdurable._timeline import duration

from ._output import cell, echo_json, echo_table, rows_as_dicts, safe
from ._support import NotFound, dsn_option, json_option, session
from .runs_cmd import MAX_LIMIT, TimeParam

_LIMIT = click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=1000,
    show_default=True,
    help="At most this many rows.",
)


def _ago(seconds: Any) -> str:
    return "" if seconds is None else f"{duration(seconds)} ago"


@click.command()
@dsn_option
@_LIMIT
@json_option
def workers(dsn: str | None, limit: int, as_json: bool) -> None:
    """List registered workers, newest first: their queues, workflows and running runs."""
    with session(dsn) as conn:
        rows = rows_as_dicts(conn.execute(Q["cli_workers"], (limit,)))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no worker has registered yet")
        return
    echo_table(
        ["worker", "queues", "workflows", "running", "started", "last seen"],
        [
            [
                cell(r["id"], 40),
                cell(", ".join(r["queues"]), 40),
                cell(", ".join(r["workflows"]), 60),
                r["running"],
                cell(r["started_at"]),
                _ago(r["last_seen_ago"]),
            ]
            for r in rows
        ],
    )


@click.command()
@dsn_option
@_LIMIT
@json_option
def workflows(dsn: str | None, limit: int, as_json: bool) -> None:
    """List registered workflows: queue, live workers serving them, pending and running runs."""
    with session(dsn) as conn:
        rows = rows_as_dicts(conn.execute(Q["cli_workflows"], (limit,)))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no workflow has been registered yet (workers register theirs when they start)")
        return
    echo_table(
        ["workflow", "queue", "live workers", "pending", "running", "registered"],
        [
            [
                cell(r["name"], 60),
                r["queue_name"],
                r["live_workers"],
                r["pending"],
                r["running"],
                cell(r["updated_at"]),
            ]
            for r in rows
        ],
    )


@click.command()
@dsn_option
@click.option(
    "--run",
    "run_arg",
    metavar="RUN",
    help="Only what was done to this run (its id, or the workflow_id of a run that still exists).",
)
@click.option("--since", type=TimeParam(), help="Only entries at or after this (ISO or 15m, 2h).")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=100,
    show_default=True,
    help="At most this many entries.",
)
@json_option
def audit(
    dsn: str | None, run_arg: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Who did what, newest first: the actions taken from the CLI and the web dashboard."""
    with session(dsn) as conn:
        run_id = None
        if run_arg is not None:
            row = conn.execute(Q["run_by_workflow_id"], run_key(run_arg)).fetchone()
            # a deleted run keeps its audit entries: its id still finds them
            run_id = row[0] if row else search_id(run_arg)
            if run_id is None:
                raise NotFound(
                    f"no run has id or workflow_id {safe(repr(run_arg[:80]))}, and it is not "
                    "a run id either. List runs with `pgdurable runs`"
                )
        at = None
        if since:
            now = conn.execute(Q["cli_engine_now"]).fetchone()
            at = parse_time("--since", since, now[0]) if now else None
        params = {"run_id": run_id, "since": at, "limit": limit}
        rows = rows_as_dicts(conn.execute(Q["cli_audit"], params))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no actions recorded" + (" for this run" if run_arg else ""))
        return
    echo_table(
        ["at", "actor", "action", "run", "target", "detail"],
        [
            [
                cell(r["at"]),
                cell(r["actor"], 40),
                r["action"],
                r["run_id"] or "",
                cell(r["target"], 40),
                cell(r["detail"], 60),
            ]
            for r in rows
        ],
    )
