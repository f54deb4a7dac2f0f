"""`pgdurable queues`: list queues with their limits and runs; configure, pause, resume, drain
and reset them (docs/flow-control.md). Every action is one of the engine's SQL functions, in one
transaction with its audit entry (`pgdurable audit`)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import click
import psycopg

from pgdurable._queries import Q

from ._audit import actor_name, actor_option, record
from ._output import echo_json, echo_table, rows_as_dicts
from ._progress import Progress
from ._support import Duration, call, dsn_option, format_duration, json_option, session

_RATE = re.compile(r"^\s*(\d{1,5})\s*/\s*(\S+)\s*$")


class RateParam(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """COUNT/DURATION: 100/1m is at most 100 claims in any minute; `none` removes the limit."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple) or value is None:
            return value
        if str(value).strip().lower() == "none":
            return ()
        match = _RATE.match(str(value))
        if not match or not 1 <= int(match.group(1)) <= 10_000:
            self.fail(
                f"{value!r} is not a rate: use COUNT/DURATION with a count from 1 to 10000, "
                "such as 100/1m or 5/1s (or none)",
                param,
                ctx,
            )
        return int(match.group(1)), Duration().convert(match.group(2), param, ctx)


def _plain(value: Any) -> Any:
    return format_duration(value) if isinstance(value, timedelta) else value


def _rate(count: Any, period: Any) -> str:
    if count is None:
        return ""
    return f"{count}/{format_duration(period)}"


@click.group(invoke_without_command=True)
@dsn_option
@json_option
@click.pass_context
def queues(ctx: click.Context, dsn: str | None, as_json: bool) -> None:
    """List queues (their limits, whether paused, runs by status); the subcommands change them."""
    if ctx.invoked_subcommand is not None:
        return
    with session(dsn) as conn:
        rows = rows_as_dicts(conn.execute(Q["cli_queues"]))
    if as_json:
        echo_json(rows)
        return
    echo_table(
        [
            "queue",
            "limit",
            "per key",
            "rate",
            "key rate",
            "paused",
            "pending",
            "running",
            "sleeping",
            "waiting",
            "oldest pending",
        ],
        [
            [
                r["queue_name"],
                "" if r["concurrency"] is None else r["concurrency"],
                ""
                if not r["configured"]
                else f"{r['key_concurrency']}{' fifo' if r['key_fifo'] else ''}",
                _rate(r["rate_count"], r["rate_period"]),
                _rate(r["key_rate_count"], r["key_rate_period"]),
                "yes" if r["paused"] else "",
                r["pending"],
                r["running"],
                r["sleeping"],
                r["waiting"],
                "" if r["oldest_pending_age"] is None else format_duration(r["oldest_pending_age"]),
            ]
            for r in rows
        ],
    )


@queues.command()
@click.argument("name")
@dsn_option
@click.option("--concurrency", type=click.IntRange(0, 1_000_000), help="Runs running at once.")
@click.option("--no-concurrency-limit", is_flag=True, help="Remove the concurrency limit.")
@click.option("--key-concurrency", type=click.IntRange(1, 1_000_000), help="Running runs per key.")
@click.option("--key-fifo/--no-key-fifo", default=None, help="Start each key's runs in order.")
@click.option("--rate", type=RateParam(), help="Claims per window, COUNT/DURATION, or none.")
@click.option("--key-rate", type=RateParam(), help="Claims per key per window, or none.")
@actor_option
def configure(
    name: str,
    dsn: str | None,
    concurrency: int | None,
    no_concurrency_limit: bool,
    key_concurrency: int | None,
    key_fifo: bool | None,
    rate: tuple[int, timedelta] | tuple[()] | None,
    key_rate: tuple[int, timedelta] | tuple[()] | None,
    actor: str | None,
) -> None:
    """Set limits of queue NAME; settings not given keep their current value."""
    who = actor_name(actor)
    if concurrency is not None and no_concurrency_limit:
        raise click.UsageError("give --concurrency N or --no-concurrency-limit, not both")
    with session(dsn) as conn, conn.transaction():
        row = conn.execute(Q["cli_queue_settings"], (name,)).fetchone()
        current = dict(zip(_SETTINGS, row, strict=True)) if row else dict.fromkeys(_SETTINGS)
        current["key_concurrency"] = current["key_concurrency"] or 1
        current["key_fifo"] = bool(current["key_fifo"])
        if concurrency is not None or no_concurrency_limit:
            current["concurrency"] = concurrency
        if key_concurrency is not None:
            current["key_concurrency"] = key_concurrency
        if key_fifo is not None:
            current["key_fifo"] = key_fifo
        for prefix, given in (("rate", rate), ("key_rate", key_rate)):
            if given is not None:
                count, period = given if given else (None, None)
                current[f"{prefix}_count"], current[f"{prefix}_period"] = count, period
        call(conn, "configure_queue", (name, *(current[k] for k in _SETTINGS)))
        shown = {
            k: format_duration(v) if isinstance(v, timedelta) else v for k, v in current.items()
        }
        record(conn, who, "configure_queue", target=name, detail=shown)
    click.echo(f"queue {name}: configured")


_SETTINGS = (
    "concurrency",
    "key_concurrency",
    "key_fifo",
    "rate_count",
    "rate_period",
    "key_rate_count",
    "key_rate_period",
)


@queues.command()
@click.argument("name")
@dsn_option
@actor_option
def pause(name: str, dsn: str | None, actor: str | None) -> None:
    """Stop claiming runs of queue NAME (running runs go on)."""
    who = actor_name(actor)
    with session(dsn) as conn, conn.transaction():
        running = int(call(conn, "cli_pause_queue", (name,)))
        record(conn, who, "pause_queue", target=name, detail={"running": running})
    click.echo(f"queue {name}: paused ({running} of its runs still running)")


@queues.command()
@click.argument("name")
@dsn_option
@actor_option
def resume(name: str, dsn: str | None, actor: str | None) -> None:
    """Claim runs of queue NAME again."""
    who = actor_name(actor)
    with session(dsn) as conn, conn.transaction():
        call(conn, "cli_resume_queue", (name,))
        record(conn, who, "resume_queue", target=name)
    click.echo(f"queue {name}: resumed")


@queues.command()
@click.argument("name")
@dsn_option
@actor_option
def reset(name: str, dsn: str | None, actor: str | None) -> None:
    """Forget the limits and pause of queue NAME: unlimited again."""
    who = actor_name(actor)
    with session(dsn) as conn, conn.transaction():
        found = call(conn, "cli_reset_queue", (name,))
        if found:
            record(conn, who, "reset_queue", target=name)
    click.echo(f"queue {name}: {'reset' if found else 'had no settings'}")


@queues.command()
@click.argument("name")
@dsn_option
@click.option(
    "--timeout",
    type=Duration(),
    default="10m",
    show_default=True,
    help="How long to wait for the running runs.",
)
@actor_option
def drain(name: str, dsn: str | None, timeout: timedelta, actor: str | None) -> None:
    """Pause queue NAME and wait until none of its runs is running (for a deploy). Resume it
    with `pgdurable queues resume NAME`. Progress (runs finished of those running) goes to
    stderr; stdout gets the outcome."""
    who = actor_name(actor)
    deadline = time.monotonic() + timeout.total_seconds()
    with session(dsn) as conn:
        with conn.transaction():
            running = int(call(conn, "cli_pause_queue", (name,)))
            record(conn, who, "drain_queue", target=name, detail={"running": running})
        click.echo(f"queue {name}: paused; {running} running", err=True)
        first = running
        with Progress(f"queue {name}: draining", first, "runs done") as progress:
            while running:
                if time.monotonic() > deadline:
                    raise click.ClickException(
                        f"queue {name} still has {running} running after "
                        f"{format_duration(timeout)}; it stays paused: run drain again, or "
                        "resume it"
                    )
                time.sleep(0.5)
                running = int(_running(conn, name))
                progress.set(max(first - running, 0))
    click.echo(f"queue {name}: drained (paused, nothing running)")


def _running(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(Q["cli_queue_running"], (name,)).fetchone()
    return 0 if row is None else int(row[0])
