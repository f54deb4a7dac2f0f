"""`pgdurable gc`: delete finished runs in batches, one transaction each (with its audit entry),
showing how many are gone of about how many on stderr."""

from __future__ import annotations

import sys
from datetime import timedelta

import click

from ._audit import actor_name, actor_option, record
from ._progress import Progress
from ._support import Duration, call, dsn_option, format_duration, session

MAX_BATCH = 1_000_000


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


@click.command()
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
    type=click.IntRange(min=1, max=MAX_BATCH),
    default=10000,
    show_default=True,
    help="Runs deleted per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Only print how many runs would be deleted.")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (asked only on a terminal)."
)
@actor_option
def gc(
    dsn: str | None,
    older_than: timedelta,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    actor: str | None,
) -> None:
    """Delete finished runs (completed, failed, cancelled) and their history.

    A run whose parent has not finished is kept. On a terminal gc first says how many runs it
    will delete and asks; --yes skips the question, and scripts (stdin not a terminal) are
    never asked. Progress (deleted so far of about how many) goes to stderr.
    """
    who = actor_name(actor)
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
        estimate = int(call(conn, "cli_gc_estimate", (older_than,)) or 0)
        with Progress("gc", estimate, "runs deleted") as progress:
            while True:
                with conn.transaction():
                    deleted = int(call(conn, "cli_gc_runs", (older_than, batch_size)) or 0)
                    if deleted:
                        detail = {"older_than": age, "deleted": deleted}
                        record(conn, who, "gc", detail=detail)
                total += deleted
                progress.set(total)
                if deleted < batch_size:
                    break
    click.echo(f"deleted {_runs(total)} that finished more than {age} ago")
