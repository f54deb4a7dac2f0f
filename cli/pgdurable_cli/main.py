"""The `pgdurable` command: install the schema, run workers, look at and operate runs."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from typing import Any

import click

import pgdurable
from pgdurable import _codec
from pgdurable._queries import Q
from pgdurable._schema import SCHEMA_VERSION, check_schema, init_schema

from ._logging import configure as configure_logging
from ._output import cell, echo_fields, echo_json, echo_table, echo_text, rows_as_dicts
from ._support import (
    Duration,
    Seconds,
    call,
    connect,
    describe_dsn,
    dsn_option,
    embedded_warning,
    errors,
    find_run,
    format_duration,
    json_option,
    load_app,
    resolve_dsn,
    session,
    warn_loudly,
)
from .actions_cmd import emit, fork, send, start
from .dashboard_cmd import dashboard
from .queues_cmd import queues
from .schedules_cmd import schedules

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
FINISHED = frozenset(STATUSES[5:])
# Upper bounds of numeric options: far above any sensible use, far below what would overflow
# an SQL integer or a thread pool.
MAX_CONCURRENCY = 1000
MAX_LIMIT = 1_000_000
MAX_POLL_INTERVAL = 3600.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(pgdurable.__version__, prog_name="pgdurable")
def cli() -> None:
    """Durable execution on PostgreSQL: install the schema, run workers, inspect and operate
    runs. See docs/reference/cli.md."""


# --- schema ------------------------------------------------------------------------------------


@cli.command()
@dsn_option
@click.option(
    "--print", "print_sql", is_flag=True, help="Print the schema SQL instead of applying it."
)
def init(dsn: str | None, print_sql: bool) -> None:
    """Install or upgrade the pgdurable schema (idempotent)."""
    if print_sql:
        click.echo(pgdurable.schema_sql(), nl=False)
        return
    url = resolve_dsn(dsn, auto_init=False)
    with connect(url) as conn, errors(url):
        changed = init_schema(conn)
    if changed:
        click.echo(f"installed schema version {SCHEMA_VERSION} in {describe_dsn(url)}")
    else:
        click.echo(f"schema already at version {SCHEMA_VERSION}, nothing to do")


@cli.command()
@dsn_option
def check(dsn: str | None) -> None:
    """Exit 0 if the schema is installed and current, else 1 with what to do."""
    url = resolve_dsn(dsn)
    with connect(url) as conn, errors(url):
        version = check_schema(conn)
    click.echo(f"schema version {version} is current in {describe_dsn(url)}")


# --- worker ------------------------------------------------------------------------------------


@cli.command()
@click.argument("app_spec", metavar="MODULE:ATTR")
@click.option(
    "--dsn",
    metavar="DSN",
    help="PostgreSQL to use instead of the App's own (its dsn=, else $PGDURABLE_DSN, else the "
    "embedded server).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1, max=MAX_CONCURRENCY),
    default=8,
    show_default=True,
    help="Runs of plain (sync) workflows executed at the same time, one thread each.",
)
@click.option(
    "--async-concurrency",
    type=click.IntRange(min=1, max=100_000),
    default=100,
    show_default=True,
    help="Runs of async workflows executed at the same time, as tasks on one event loop.",
)
@click.option(
    "--async-connections",
    type=click.IntRange(min=1, max=10_000),
    default=None,
    help="Database connections the async runs share (default: min(async concurrency, 10) + 1); "
    "a run holds one only while its statements or transaction steps run.",
)
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Queue to claim from (repeatable). Default: the queues of the App's workflows.",
)
@click.option(
    "--poll-interval",
    type=Seconds(min=0, min_open=True, max=MAX_POLL_INTERVAL),
    default=1.0,
    show_default=True,
    help="Seconds between claims when no notification arrives.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with the run fields of each record.",
)
def worker(
    app_spec: str,
    dsn: str | None,
    concurrency: int,
    async_concurrency: int,
    async_connections: int | None,
    queues: tuple[str, ...],
    poll_interval: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run workflows of the App MODULE:ATTR until SIGTERM or SIGINT.

    ATTR is a pgdurable.App, or a function or class returning one (a workflow or step named by
    mistake is refused, never called). On the first signal the worker stops claiming and hands
    its current runs back at their next durable operation; a second signal exits at once.
    """
    # A SIGTERM or SIGINT during start-up (importing the app, checking the schema) ends the
    # command cleanly, exit 0, instead of killing it: the worker takes over the signals in run().
    early: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda received, _frame: early.append(received))
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    configure_logging(log_level, log_format)
    log = logging.getLogger("pgdurable.worker")
    app = load_app(app_spec)
    if dsn:
        if app._pool is not None:
            raise click.UsageError(
                f"{app_spec} already opened its connection pool at import, so --dsn cannot "
                "apply: drop --dsn or create the App without connecting"
            )
        # The App resolves its DSN lazily; --dsn takes the place of what it was given.
        app.use_database(dsn)
    warning = embedded_warning(app)
    if warning:
        warn_loudly(log, warning)
    try:
        url = app.dsn
    except RuntimeError as exc:
        raise click.UsageError(f"{exc}; or pass --dsn") from exc
    try:
        with connect(url) as conn, errors(url):
            check_schema(conn)
        try:
            runner = app.worker(
                concurrency,
                queues=queues or None,
                poll_interval=poll_interval,
                async_concurrency=async_concurrency,
                async_connections=async_connections,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        if not app.workflows:
            log.warning("%s registers no workflows: this worker can only hand runs back", app_spec)
        log.info(
            "worker %s on %s: queues %s, concurrency %s (async %s), workflows %s",
            app.worker_id,
            describe_dsn(url),
            ", ".join(runner.queues),
            concurrency,
            async_concurrency,
            ", ".join(sorted(app.workflows)) or "none",
        )
        with errors(url):
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if early:
                log.info("stopped by signal %s before the worker started", early[0])
                return
            runner.run()
    finally:
        app.close()


# --- runs --------------------------------------------------------------------------------------


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


@cli.command()
@dsn_option
@click.option("--status", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option("--workflow", metavar="NAME", help="Only runs of this workflow.")
@click.option("--queue", metavar="NAME", help="Only runs of this queue.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
@json_option
def runs(
    dsn: str | None,
    status: str | None,
    workflow: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    params = {"status": status, "workflow": workflow, "queue": queue, "limit": limit}
    with session(dsn) as conn:
        found = rows_as_dicts(conn.execute(Q["cli_list_runs"], params))
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no runs match" if any((status, workflow, queue)) else "no runs yet")
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


@cli.command()
@click.argument("run")
@dsn_option
@json_option
def show(run: str, dsn: str | None, as_json: bool) -> None:
    """Show RUN (its id or workflow_id): fields, error and checkpoints."""
    with session(dsn) as conn:
        run_id, _, _ = find_run(conn, run)
        fields = _decoded(rows_as_dicts(conn.execute(Q["cli_show_run"], (run_id,))))
        steps = _decoded(rows_as_dicts(conn.execute(Q["run_steps"], (run_id,))))
    if not fields:
        raise click.ClickException(f"run {run_id} was deleted while it was being read")
    info = fields[0]
    if as_json:
        echo_json({"run": info, "checkpoints": steps})
        return
    wake = f"{cell(info['wakes_at'])} ({info['wake_reason']})" if info["wakes_at"] else None
    echo_fields(
        [
            ("run", info["id"]),
            ("workflow_id", info["workflow_id"]),
            ("workflow", info["workflow_name"]),
            ("queue", info["queue_name"]),
            (
                "status",
                info["status"]
                + (
                    " (cancel requested)"
                    if info["cancel_requested"] and info["status"] == "running"
                    else ""
                ),
            ),
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


@cli.command()
@click.argument("run")
@dsn_option
def cancel(run: str, dsn: str | None) -> None:
    """Cancel RUN (its id or workflow_id) and its unfinished children."""
    with session(dsn) as conn:
        run_id, workflow_id, _ = find_run(conn, run)
        # cancel_run answers a finished run with its status, 'cancelled' included: read it first
        before = call(conn, "run_state", (run_id,))
        outcome = call(conn, "cancel_run", (run_id,))
    name = _run_name(run_id, workflow_id)
    if before in FINISHED:
        click.echo(f"{name} had already finished ({before}): nothing to cancel")
    elif outcome == "cancelled":
        click.echo(f"cancelled {name}")
    elif outcome == "cancelling":
        click.echo(
            f"cancel requested for {name}: it is running, and its worker stops it at its next "
            "durable operation"
        )
    else:
        click.echo(f"{name} finished ({outcome}) before it could be cancelled")


@cli.command()
@click.argument("run")
@dsn_option
def pause(run: str, dsn: str | None) -> None:
    """Pause RUN: at once if it is pending, sleeping or waiting, else at its next durable
    operation. `pgdurable resume RUN` goes on from its last checkpoint."""
    with session(dsn) as conn:
        run_id, workflow_id, _ = find_run(conn, run)
        outcome = call(conn, "pause_run", (run_id,))
    name = _run_name(run_id, workflow_id)
    if outcome == "paused":
        click.echo(f"paused {name}: it holds no worker until `pgdurable resume`")
    elif outcome == "pausing":
        click.echo(f"pause requested for {name}: its worker parks it at its next durable operation")
    else:
        click.echo(f"{name} has finished ({outcome}): nothing to pause")


def _run_name(run_id: Any, workflow_id: str) -> str:
    return f"run {run_id}" if workflow_id == str(run_id) else f"run {run_id} ({cell(workflow_id)})"


def _restart(run: str, dsn: str | None, query: str, verb: str) -> None:
    with session(dsn) as conn:
        run_id, workflow_id, _ = find_run(conn, run)
        call(conn, query, (run_id,))
    name = _run_name(run_id, workflow_id)
    click.echo(f"{verb} {name}: pending again, it replays its checkpoints and goes on")


@cli.command()
@click.argument("run")
@dsn_option
def resume(run: str, dsn: str | None) -> None:
    """Restart a failed, cancelled or paused RUN from its last checkpoint."""
    _restart(run, dsn, "resume_run", "resumed")


@cli.command()
@click.argument("run")
@dsn_option
def retry(run: str, dsn: str | None) -> None:
    """Retry a failed RUN: completed steps are replayed, the failed one runs again."""
    _restart(run, dsn, "cli_retry_run", "retrying")


@cli.command()
@dsn_option
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    metavar="DURATION",
    help="Delete finished runs that ended longer ago than this: 30s, 15m, 12h, 7d, 2w "
    "(at most 36500d).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=10000,
    show_default=True,
    help="Runs deleted per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Only print how many runs would be deleted.")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (asked only on a terminal)."
)
def gc(dsn: str | None, older_than: timedelta, batch_size: int, dry_run: bool, yes: bool) -> None:
    """Delete finished runs (completed, failed, cancelled) and their history.

    A run whose parent has not finished is kept. On a terminal gc first says how many runs it
    will delete and asks; --yes skips the question, and scripts (stdin not a terminal) are
    never asked.
    """
    age = format_duration(older_than)
    total = 0
    with session(dsn) as conn:
        if dry_run or (not yes and sys.stdin is not None and sys.stdin.isatty()):
            count = int(call(conn, "cli_gc_count", (older_than,)) or 0)
            if dry_run:
                click.echo(f"would delete {_runs(count)} that finished more than {age} ago")
                return
            if count:
                click.confirm(
                    f"delete {_runs(count)} that finished more than {age} ago, with their history?",
                    abort=True,
                )
        while True:
            deleted = int(call(conn, "cli_gc_runs", (older_than, batch_size)) or 0)
            total += deleted
            if deleted < batch_size:
                break
    click.echo(f"deleted {_runs(total)} that finished more than {age} ago")


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


cli.add_command(dashboard)
for command in (start, emit, send, fork):
    cli.add_command(command)
cli.add_command(queues)
cli.add_command(schedules)

if __name__ == "__main__":
    cli()
