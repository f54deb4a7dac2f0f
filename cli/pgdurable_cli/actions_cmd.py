"""`pgdurable start`, `emit`, `send` and `fork`: the actions the SQL API and the dashboard offer,
from the command line. Each is one engine SQL function; JSON goes in as text and is checked by
the engine's limits, and every command prints what it did (or JSON with --json). Each records
who did it (`pgdurable audit`) in the action's transaction."""

from __future__ import annotations

import json
from typing import Any

import click
from psycopg.types.json import Jsonb

from pgdurable._queries import Q

from ._audit import actor_name, actor_option, record
from ._output import echo_json
from ._support import call, dsn_option, find_run, json_option, session


def _json(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not JSON: {exc}") from exc


@click.command()
@click.argument("workflow")
@dsn_option
@json_option
@click.option("--args", "args_json", default="[]", show_default=True, help="JSON array.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="JSON object.")
@click.option("--workflow-id", help="Idempotency key: a second start returns the same run.")
@click.option("--queue", help="Queue (default: the one the workflow's workers registered).")
@click.option("--priority", type=click.IntRange(-(2**31), 2**31 - 1), help="Higher first.")
@click.option("--concurrency-key", help="The key the queue's per-key limits apply to.")
@click.option("--dedup-key", help="While an unfinished run has this key, return it instead.")
@actor_option
def start(
    workflow: str,
    dsn: str | None,
    as_json: bool,
    args_json: str,
    kwargs_json: str,
    workflow_id: str | None,
    queue: str | None,
    priority: int | None,
    concurrency_key: str | None,
    dedup_key: str | None,
    actor: str | None,
) -> None:
    """Start a run of WORKFLOW (a worker serving it executes it)."""
    who = actor_name(actor)
    args, kwargs = _json(args_json, "--args"), _json(kwargs_json, "--kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON array and --kwargs a JSON object")
    given = {
        "workflow_id": workflow_id,
        "queue": queue,
        "priority": priority,
        "concurrency_key": concurrency_key,
        "dedup_key": dedup_key,
    }
    options = {k: v for k, v in given.items() if v is not None}
    with session(dsn) as conn, conn.transaction():
        run_id = call(
            conn,
            "cli_start_run",
            (workflow, Jsonb({"args": args, "kwargs": kwargs}), Jsonb(options)),
        )
        _, key, name = find_run(conn, str(run_id))
        record(conn, who, "start", run_id=run_id, target=name, detail=options or None)
    if as_json:
        echo_json({"run_id": run_id, "workflow_id": key, "workflow": name})
    else:
        click.echo(f"started run {run_id} ({name}, workflow_id {key})")


@click.command()
@click.argument("name")
@dsn_option
@click.option("--payload", default="null", show_default=True, help="JSON value.")
@actor_option
def emit(name: str, dsn: str | None, payload: str, actor: str | None) -> None:
    """Emit the durable event NAME: every run waiting for it wakes."""
    who = actor_name(actor)
    value = _json(payload, "--payload")
    with session(dsn) as conn, conn.transaction():
        event_id = call(conn, "cli_emit_event", (name, Jsonb(value)))
        record(conn, who, "emit", target=name, detail={"event_id": event_id})
    click.echo(f"emitted event {name} (id {event_id})")


@click.command()
@click.argument("run")
@dsn_option
@click.option("--topic", help="The topic the run receives with recv(topic).")
@click.option("--payload", default="null", show_default=True, help="JSON value.")
@actor_option
def send(run: str, dsn: str | None, topic: str | None, payload: str, actor: str | None) -> None:
    """Send a message to RUN (its id or workflow_id)."""
    who = actor_name(actor)
    value = _json(payload, "--payload")
    with session(dsn) as conn, conn.transaction():
        run_id, key, _ = find_run(conn, run)
        call(conn, "cli_send_message", (str(run_id), Jsonb(value), topic))
        record(conn, who, "send", run_id=run_id, target=topic)
    click.echo(f"sent a message to run {run_id} ({key}), topic {topic or '(none)'}")


@click.command()
@click.argument("run")
@dsn_option
@json_option
@click.option(
    "--from-step",
    "from_step",
    required=True,
    help="Step key (e.g. charge or charge#2) or position: the new run replays the operations "
    "before it and executes it and the rest anew.",
)
@click.option("--workflow-id", help="The new run's workflow_id (default: a fresh one).")
@actor_option
def fork(
    run: str,
    dsn: str | None,
    as_json: bool,
    from_step: str,
    workflow_id: str | None,
    actor: str | None,
) -> None:
    """Start a new run of RUN's workflow and input that replays RUN's history up to a step."""
    who = actor_name(actor)
    with session(dsn) as conn, conn.transaction():
        run_id, _, _ = find_run(conn, run)
        row = conn.execute(Q["cli_step_position"], (run_id, from_step, from_step)).fetchone()
        if row is None:
            raise click.BadParameter(
                f"run {run_id} has no step {from_step!r}: `pgdurable show {run}` lists its steps"
            )
        new_id = call(conn, "cli_fork_run", (run_id, row[0], workflow_id))
        detail = {"from_step": from_step, "from_seq": row[0], "new_run_id": str(new_id)}
        record(conn, who, "fork", run_id=run_id, target=str(new_id), detail=detail)
    if as_json:
        echo_json({"run_id": new_id, "forked_from": run_id, "from_seq": row[0]})
    else:
        click.echo(f"forked run {run_id} at step {from_step} (position {row[0]}): new run {new_id}")
