"""The `pgdurable` command: install the schema, run workers, look at and operate runs."""

from __future__ import annotations

import logging
import signal

import click

import pgdurable
from pgdurable._schema import SCHEMA_VERSION, check_schema, init_schema

from ._logging import configure as configure_logging
from ._support import (
    Seconds,
    connect,
    describe_dsn,
    dsn_option,
    embedded_warning,
    errors,
    load_app,
    resolve_dsn,
    warn_loudly,
)
from .actions_cmd import emit, fork, send, start
from .dashboard_cmd import dashboard
from .gc_cmd import gc
from .queues_cmd import queues
from .registry_cmd import audit, workers, workflows
from .run_actions_cmd import cancel, pause, resume, retry
from .runs_cmd import runs, show
from .schedules_cmd import schedules

# Upper bounds of numeric options: far above any sensible use, far below what would overflow
# an SQL integer or a thread pool.
MAX_CONCURRENCY = 1000
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
    "--pooler",
    type=click.Choice(["transaction"]),
    default=None,
    help="The DSN goes through a transaction-mode pooler (PgBouncer pool_mode = transaction): "
    "no LISTEN, session state or prepared statements on it. Default: the App's pooler=, else "
    "$PGDURABLE_POOLER. See docs/poolers.md.",
)
@click.option(
    "--listen-dsn",
    metavar="DSN",
    default=None,
    help="A direct connection (not through the pooler) for LISTEN, so starts and events wake "
    "the worker at once. Default: the App's listen_dsn=, else $PGDURABLE_LISTEN_DSN; "
    "without one, a pooled worker polls every --poll-interval.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (needs pgdurable[metrics]; "
    "0: any free port). See docs/operations.md#metrics.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="The address --metrics-port listens on (0.0.0.0: every interface).",
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
    pooler: str | None,
    listen_dsn: str | None,
    metrics_port: int | None,
    metrics_host: str,
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
    if pooler or listen_dsn:
        if app._pool is not None:
            raise click.UsageError(
                f"{app_spec} already opened its connection pool at import, so --pooler and "
                "--listen-dsn cannot apply: give them to the App, or create it without connecting"
            )
        app.use_pooler(pooler or app.pooler, listen_dsn or app.listen_dsn)
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
                metrics_port=metrics_port,
                metrics_host=metrics_host,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        except ImportError as exc:  # --metrics-port without prometheus-client
            raise click.ClickException(str(exc)) from exc
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


for command in (
    runs,
    show,
    cancel,
    pause,
    resume,
    retry,
    gc,
    start,
    emit,
    send,
    fork,
    queues,
    schedules,
    workers,
    workflows,
    audit,
    dashboard,
):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
