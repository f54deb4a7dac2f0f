"""`pgdurable dashboard`: serve the web dashboard (the optional extra pgdurable[dashboard])."""

from __future__ import annotations

import click

from pgdurable._schema import check_schema

from ._logging import configure as configure_logging
from ._support import connect, describe_dsn, errors, resolve_dsn

INSTALL_HINT = 'pip install "pgdurable[dashboard]"'


@click.command()
@click.option(
    "--dsn",
    envvar="PGDURABLE_DSN",
    show_envvar=True,
    metavar="DSN",
    help="PostgreSQL to show (URI or key=value). Default: $PGDURABLE_DSN, else the embedded "
    "development server.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback needs a token (--token-file or "
    "$PGDURABLE_DASHBOARD_TOKEN).",
)
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8471, show_default=True)
@click.option("--read-only", is_flag=True, help="Hide every action; their POSTs answer 403.")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="File holding the token every request must carry (bearer, or the password of basic "
    "auth). Default: $PGDURABLE_DASHBOARD_TOKEN, else no authentication (loopback only).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def dashboard(
    dsn: str | None,
    host: str,
    port: int,
    read_only: bool,
    token_file: str | None,
    log_level: str,
) -> None:
    """Serve the web dashboard: runs, a run's timeline, queues, workers, workflows, actions.

    It listens on 127.0.0.1 by default and refuses any other address unless a token is set.
    Actions (cancel, retry, resume, fork, emit, send) go through the engine's SQL functions
    and are logged with who did them; --read-only turns them off.
    """
    try:
        from pgdurable import dashboard as web
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard is an optional extra that is not installed ({exc}): {INSTALL_HINT}"
        ) from exc
    try:
        token = web.load_token(token_file)
        web.check_bind(host, token)
    except ValueError as exc:  # InsecureBind too
        raise click.UsageError(str(exc)) from exc
    configure_logging(log_level, "text")
    url = resolve_dsn(dsn)
    with connect(url) as conn, errors(url):
        check_schema(conn)
    click.echo(
        f"pgdurable dashboard for {describe_dsn(url)} on http://"
        f"{f'[{host}]' if ':' in host else host}:{port}/"
        f"{' (read-only)' if read_only else ''} (Ctrl-C stops it)",
        err=True,
    )
    try:
        web.serve(url, host=host, port=port, read_only=read_only, token=token, log_level=log_level)
    except ImportError as exc:
        raise click.ClickException(f"{exc}: {INSTALL_HINT}") from exc
