"""`pgdurable cancel`, `pause`, `resume` and `retry`: one engine SQL function per run, in one
transaction with its audit entry. Each takes several runs (`pgdurable runs --ids | xargs
pgdurable retry`): every run is tried, each in its own transaction, and the exit code is 1 if
any could not be acted on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import psycopg

from pgdurable._errors import PgDurableError
from pgdurable._run_filters import FINISHED

from ._audit import actor_name, actor_option, record
from ._output import cell, safe
from ._support import call, dsn_option, find_run, session

Act = Callable[[psycopg.Connection[Any], str, str], str]


def run_name(run_id: Any, workflow_id: str) -> str:
    return f"run {run_id}" if workflow_id == str(run_id) else f"run {run_id} ({cell(workflow_id)})"


def _each(dsn: str | None, actor: str | None, keys: tuple[str, ...], act: Act) -> None:
    """``act`` on each run named, in its own transaction; one failing run does not stop the
    others, it is reported on stderr and makes the exit code 1 (or 2 for one unknown run)."""
    who = actor_name(actor)
    failed = 0
    with session(dsn) as conn:
        for key in keys:
            try:
                with conn.transaction():
                    done = act(conn, key, who)
            except (click.ClickException, PgDurableError) as exc:
                if len(keys) == 1:
                    raise
                failed += 1
                message = exc.format_message() if isinstance(exc, click.ClickException) else exc
                click.echo(f"Error: {safe(str(message))}", err=True)
            else:
                click.echo(done)
    if failed:
        raise click.ClickException(f"{failed} of {len(keys)} runs could not be acted on (above)")


def _cancel(conn: psycopg.Connection[Any], key: str, who: str) -> str:
    run_id, workflow_id, _ = find_run(conn, key)
    # cancel_run answers a finished run with its status, 'cancelled' included: read it first
    before = call(conn, "run_state", (run_id,))
    outcome = call(conn, "cancel_run", (run_id,))
    record(conn, who, "cancel", run_id=run_id, detail={"before": before, "outcome": outcome})
    name = run_name(run_id, workflow_id)
    if before in FINISHED:
        return f"{name} had already finished ({before}): nothing to cancel"
    if outcome == "cancelled":
        return f"cancelled {name}"
    if outcome == "cancelling":
        return (
            f"cancel requested for {name}: it is running, and its worker stops it at its next "
            "durable operation"
        )
    return f"{name} finished ({outcome}) before it could be cancelled"


def _pause(conn: psycopg.Connection[Any], key: str, who: str) -> str:
    run_id, workflow_id, _ = find_run(conn, key)
    outcome = call(conn, "pause_run", (run_id,))
    record(conn, who, "pause", run_id=run_id, detail={"outcome": outcome})
    name = run_name(run_id, workflow_id)
    if outcome == "paused":
        return f"paused {name}: it holds no worker until `pgdurable resume`"
    if outcome == "pausing":
        return f"pause requested for {name}: its worker parks it at its next durable operation"
    return f"{name} has finished ({outcome}): nothing to pause"


def _restart(query: str, action: str, verb: str) -> Act:
    def act(conn: psycopg.Connection[Any], key: str, who: str) -> str:
        run_id, workflow_id, _ = find_run(conn, key)
        call(conn, query, (run_id,))
        record(conn, who, action, run_id=run_id)
        name = run_name(run_id, workflow_id)
        return f"{verb} {name}: pending again, it replays its checkpoints and goes on"

    return act


_RUNS = click.argument("runs", metavar="RUN...", nargs=-1, required=True)


@click.command()
@_RUNS
@dsn_option
@actor_option
def cancel(runs: tuple[str, ...], dsn: str | None, actor: str | None) -> None:
    """Cancel each RUN (its id or workflow_id) and its unfinished children."""
    _each(dsn, actor, runs, _cancel)


@click.command()
@_RUNS
@dsn_option
@actor_option
def pause(runs: tuple[str, ...], dsn: str | None, actor: str | None) -> None:
    """Pause each RUN: at once if it is pending, sleeping or waiting, else at its next durable
    operation. `pgdurable resume RUN` goes on from its last checkpoint."""
    _each(dsn, actor, runs, _pause)


@click.command()
@_RUNS
@dsn_option
@actor_option
def resume(runs: tuple[str, ...], dsn: str | None, actor: str | None) -> None:
    """Restart each failed, cancelled or paused RUN from its last checkpoint."""
    _each(dsn, actor, runs, _restart("resume_run", "resume", "resumed"))


@click.command()
@_RUNS
@dsn_option
@actor_option
def retry(runs: tuple[str, ...], dsn: str | None, actor: str | None) -> None:
    """Retry each failed RUN: completed steps are replayed, the failed one runs again."""
    _each(dsn, actor, runs, _restart("cli_retry_run", "retry", "retrying"))
