"""`pgdurable schedules`: list schedules with their next and last ticks; add, pause, resume,
trigger ("run now") and delete them (docs/schedules.md). Each action is an engine SQL function,
in one transaction with its audit entry (`pgdurable audit`)."""

from __future__ import annotations

import json
from typing import Any

import click

import pgdurable
from pgdurable._queries import Q
from pgdurable._schedules import CATCHUP, OVERLAP, ScheduleSpec

from ._audit import actor_name, actor_option, record
from ._output import echo_json, echo_table, rows_as_dicts, safe
from ._support import call, dsn_option, json_option, session


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z")


@click.group(invoke_without_command=True)
@dsn_option
@json_option
@click.pass_context
def schedules(ctx: click.Context, dsn: str | None, as_json: bool) -> None:
    """List schedules (next and last tick, policies); the subcommands change them."""
    if ctx.invoked_subcommand is not None:
        return
    with session(dsn) as conn:
        rows = rows_as_dicts(conn.execute(Q["cli_schedules"]))
    if as_json:
        echo_json(rows)
        return
    echo_table(
        [
            "schedule",
            "workflow",
            "cron",
            "tz",
            "next (UTC)",
            "last (UTC)",
            "paused",
            "catchup",
            "overlap",
        ],
        [
            [
                r["name"],
                r["workflow_name"],
                r["cron"],
                r["timezone"],
                _when(r["next_fire_at"]) or "(computed by a worker)",
                _when(r["last_fire_at"]),
                "yes" if r["paused"] else "",
                r["catchup"],
                r["overlap"],
            ]
            for r in rows
        ],
    )


@schedules.command()
@click.argument("name")
@click.argument("workflow")
@dsn_option
@click.option(
    "--cron",
    required=True,
    help="5 fields (minute hour day month weekday), or 6 with seconds first (Python 3.11+).",
)
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the cron.")
@click.option("--args", "args_json", default="[]", help="JSON array of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON object of keyword arguments.")
@click.option("--queue", help="Queue of the runs (default: the workflow's).")
@click.option("--catchup", type=click.Choice(CATCHUP), default="latest", show_default=True)
@click.option("--catchup-max", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--overlap", type=click.Choice(OVERLAP), default="allow", show_default=True)
@actor_option
def add(
    name: str,
    workflow: str,
    dsn: str | None,
    cron: str,
    tz: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    catchup: str,
    catchup_max: int,
    overlap: str,
    actor: str | None,
) -> None:
    """Create or replace schedule NAME starting WORKFLOW on every tick of --cron."""
    who = actor_name(actor)
    try:
        args, kwargs = json.loads(args_json), json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON array and --kwargs a JSON object")
    try:
        spec = ScheduleSpec(
            name, workflow, cron, tz, tuple(args), kwargs, queue, catchup, catchup_max, overlap
        )
    except ValueError as exc:
        raise click.BadParameter(safe(str(exc))) from exc
    with session(dsn) as conn, conn.transaction():
        call(conn, "upsert_schedule", spec.params(pgdurable.Limits()))
        detail = {"workflow": workflow, "cron": cron, "timezone": tz}
        record(conn, who, "add_schedule", target=name, detail=detail)
    click.echo(f"schedule {name}: {workflow} at '{cron}' ({tz})")


def _named(verb: str, query: str, done: str, help_text: str) -> Any:
    def command(name: str, dsn: str | None, actor: str | None) -> None:
        who = actor_name(actor)
        with session(dsn) as conn, conn.transaction():
            found = call(conn, query, (name,))
            if not found:
                raise click.ClickException(
                    f"no schedule named {safe(repr(name))}: `pgdurable schedules` lists them"
                )
            record(conn, who, f"{verb}_schedule", target=name)
        click.echo(f"schedule {name}: {done}")

    command.__doc__ = help_text
    return schedules.command(name=verb)(click.argument("name")(dsn_option(actor_option(command))))


pause = _named(
    "pause", "cli_pause_schedule", "paused", "Pause schedule NAME: it starts nothing until resumed."
)
resume = _named(
    "resume",
    "cli_resume_schedule",
    "resumed (fires next at its next tick)",
    "Resume schedule NAME: it fires next at its next tick (ticks missed while paused are not "
    "caught up).",
)
delete = _named(
    "delete",
    "cli_delete_schedule",
    "deleted (its runs stay)",
    "Delete schedule NAME (its runs stay).",
)


@schedules.command()
@click.argument("name")
@dsn_option
@actor_option
def trigger(name: str, dsn: str | None, actor: str | None) -> None:
    """Run schedule NAME now (its overlap policy applies; its next tick stays)."""
    who = actor_name(actor)
    with session(dsn) as conn, conn.transaction():
        run_id = call(conn, "cli_trigger_schedule", (name,))
        record(conn, who, "trigger_schedule", run_id=run_id, target=name)
    if run_id is None:
        click.echo(f"schedule {name}: skipped, its last run still goes (overlap=skip)")
    else:
        click.echo(f"schedule {name}: started run {run_id}")
