"""`pgdurable runs` (the filters of the web runs page, keyset pages) and `pgdurable show` (a run's
fields and checkpoints, or its timeline)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

import pgdurable
from pgdurable import _codec
from pgdurable._queries import Q
from pgdurable._run_filters import (
    STATUSES,
    BadFilter,
    cursor_of,
    parse_cursor,
    parse_time,
    search_id,
)

from ._output import cell, echo_fields, echo_json, echo_table, echo_text, rows_as_dicts
from ._support import dsn_option, find_run, json_option, session
from ._timeline_text import echo_timeline, load_timeline, timeline_json

MAX_LIMIT = 1_000_000
MAX_TEXT = 200  # of --search, --workflow, --queue: names, not documents


class TimeParam(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """An ISO 8601 time (UTC unless it has an offset) or an age before now: 15m, 2h, 7d."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        try:  # checked now, read against engine time once connected
            parse_time(f"--{param.name if param else 'time'}", text, datetime.now(timezone.utc))
        except BadFilter as exc:
            self.fail(str(exc).partition(": ")[2], param, ctx)
        except OverflowError:
            self.fail(
                f"{text[:50]!r} is too far back: give a later time or a shorter age", param, ctx
            )
        return text


class CursorParam(click.ParamType):  # type: ignore[type-arg]
    """The cursor a page of `pgdurable runs` prints for the next one."""

    name = "cursor"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_cursor("--before", str(value))
        except BadFilter as exc:
            self.fail(str(exc).partition(": ")[2], param, ctx)


def _short_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and len(value) > MAX_TEXT:
        raise click.BadParameter(f"at most {MAX_TEXT} characters")
    return value or None


def _info(run: dict[str, Any]) -> str:
    """The one thing to know about a run beyond its status."""
    if run["error_type"] and run["status"] in ("failed", "sleeping"):
        return f"{run['error_type']}: {run['error_message'] or ''}"
    if run["status"] == "waiting" and run["wait_for"]:
        until = f" until {cell(run['wakes_at'])}" if run["wakes_at"] else ""
        return f"waiting for {run['wait_for']}{until}"
    if run["status"] == "sleeping" and run["wakes_at"]:
        return f"wakes {cell(run['wakes_at'])}"
    if run.get("unserved"):
        return str(run["unserved"])
    return run["note"] or ""


@click.command()
@dsn_option
@click.option("--status", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option("--workflow", metavar="NAME", callback=_short_text, help="Only this workflow.")
@click.option("--queue", metavar="NAME", callback=_short_text, help="Only runs of this queue.")
@click.option(
    "--since",
    type=TimeParam(),
    help="Only runs created at or after this: 2025-01-31T12:00 (UTC unless an offset is "
    "given) or an age such as 15m, 2h, 7d.",
)
@click.option("--until", type=TimeParam(), help="Only runs created before this (same forms).")
@click.option(
    "--search",
    metavar="TEXT",
    callback=_short_text,
    help="Only runs whose workflow_id contains TEXT, or the run whose id is TEXT.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
@click.option(
    "--before",
    type=CursorParam(),
    metavar="CURSOR",
    help="The next page: the runs after the last one of the previous page, whose cursor it "
    "printed (with --json: the last row's cursor field).",
)
@click.option("--ids", "ids_only", is_flag=True, help="Print only the run ids, one a line.")
@json_option
def runs(
    dsn: str | None,
    status: str | None,
    workflow: str | None,
    queue: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
    limit: int,
    before: tuple[datetime, Any] | None,
    ids_only: bool,
    as_json: bool,
) -> None:
    """List runs, newest first, filtered like the web runs page."""
    if ids_only and as_json:
        raise click.UsageError("give --ids or --json, not both")
    params: dict[str, Any] = {
        "status": status,
        "workflow": workflow,
        "queue": queue,
        "search": search,
        "search_id": search_id(search),
        "cursor_at": before[0] if before else None,
        "cursor_id": before[1] if before else None,
        "limit": limit + 1,
    }
    with session(dsn) as conn:
        now = None
        if since or until:
            row = conn.execute(Q["cli_engine_now"]).fetchone()
            now = row[0] if row else datetime.now(timezone.utc)
        params["since"] = parse_time("--since", since, now) if since and now else None
        params["until"] = parse_time("--until", until, now) if until and now else None
        found = rows_as_dicts(conn.execute(Q["cli_list_runs"], params))
    more = len(found) > limit
    found = found[:limit]
    for row in found:
        row["cursor"] = cursor_of(row)
    if as_json:
        echo_json(found)
        return
    if ids_only:
        for row in found:
            click.echo(row["id"])
        return
    filtered = any((status, workflow, queue, since, until, search, before))
    if not found:
        click.echo("no runs match" if filtered else "no runs yet")
        return
    echo_table(
        ["id", "workflow_id", "workflow", "queue", "status", "attempt", "steps", "created", "info"],
        [
            [
                r["id"],
                cell(r["workflow_id"], 30),
                cell(r["workflow_name"], 30),
                r["queue_name"],
                r["status"],
                r["attempt"],
                r["checkpoints"],
                cell(r["created_at"]),
                cell(_info(r), 50),
            ]
            for r in found
        ],
    )
    if more:
        click.echo(f"more runs: add --before '{found[-1]['cursor']}' for the next page", err=True)


def _decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON columns (read as text) decoded with the default limits; a value over them is shown
    as its text, so no stored value can make `show` crash."""
    for row in rows:
        for key in ("input", "output", "error"):
            if isinstance(row.get(key), str):
                try:
                    row[key] = _codec.loads(row[key], key)
                except pgdurable.SerializationError:
                    row[key] = f"<not decoded: {len(row[key])} characters over the JSON limits>"
    return rows


@click.command()
@click.argument("run")
@dsn_option
@click.option(
    "--timeline",
    is_flag=True,
    help="Show the run's timeline instead: each operation's start, duration, gap, attempts.",
)
@json_option
def show(run: str, dsn: str | None, timeline: bool, as_json: bool) -> None:
    """Show RUN (its id or workflow_id): fields, error and checkpoints, or its timeline."""
    with session(dsn) as conn:
        run_id, _, _ = find_run(conn, run)
        if timeline:
            loaded = load_timeline(conn, run_id)
        else:
            fields = _decoded(rows_as_dicts(conn.execute(Q["cli_show_run"], (run_id,))))
            steps = _decoded(rows_as_dicts(conn.execute(Q["run_steps"], (run_id,))))
    if timeline:
        if loaded is None:
            raise click.ClickException(f"run {run_id} was deleted while it was being read")
        if as_json:
            echo_json(timeline_json(*loaded))
        else:
            echo_timeline(*loaded)
        return
    if not fields:
        raise click.ClickException(f"run {run_id} was deleted while it was being read")
    info = fields[0]
    if as_json:
        echo_json({"run": info, "checkpoints": steps})
        return
    _echo_run(info, steps)


def _echo_run(info: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    wake = f"{cell(info['wakes_at'])} ({info['wake_reason']})" if info["wakes_at"] else None
    cancelling = info["cancel_requested"] and info["status"] == "running"
    echo_fields(
        [
            ("run", info["id"]),
            ("workflow_id", info["workflow_id"]),
            ("workflow", info["workflow_name"]),
            ("queue", info["queue_name"]),
            ("status", info["status"] + (" (cancel requested)" if cancelling else "")),
            ("priority", info["priority"]),
            ("attempt", info["attempt"]),
            ("recoveries", f"{info['recoveries']} of {info['max_recoveries']}"),
            ("worker", info["worker_id"]),
            ("lease until", info["lease_expires_at"]),
            ("waiting for", info["wait_for"]),
            ("wakes at", wake),
            ("note", info["note"]),
            ("parent", info["parent_id"]),
            ("deadline", info["deadline_at"]),
            ("created", info["created_at"]),
            ("started", info["started_at"]),
            ("updated", info["updated_at"]),
            ("finished", info["finished_at"]),
            ("input", info["input"]),
            ("output", info["output"]),
        ]
    )
    error = info["error"]
    if isinstance(error, dict):
        click.echo(f"\nerror: {cell(error.get('type') or 'Error')}: {cell(error.get('message'))}")
        if error.get("traceback"):
            echo_text(str(error["traceback"]).rstrip())
    click.echo(f"\ncheckpoints ({len(steps)}):")
    if steps:
        echo_table(
            ["seq", "key", "kind", "name", "attempts", "run attempt", "completed", "result"],
            [
                [
                    s["seq"],
                    s["step_key"],
                    s["kind"],
                    s["step_name"],
                    s["attempts"],
                    s["run_attempt"],
                    cell(s["completed_at"]),
                    cell(f"error {s['error']}" if s["error"] is not None else s["output"], 60),
                ]
                for s in steps
            ],
        )
