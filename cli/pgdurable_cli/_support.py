"""What the commands share: finding the database, connecting, turning errors into messages."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

import pgdurable
from pgdurable._app import call_sql
from pgdurable._errors import PgDurableError, RunNotFound
from pgdurable._queries import Q
from pgdurable._schema import check_schema, init_schema


class NotFound(click.ClickException):
    """A run the user named does not exist: exit code 2, like a usage error."""

    exit_code = 2


def describe_dsn(dsn: str) -> str:
    """The DSN as user@host:port/dbname, never with its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = str(parts.get("host") or os.environ.get("PGHOST") or "local socket")
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    user = str(parts.get("user") or os.environ.get("PGUSER") or "")
    dbname = parts.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"


def resolve_dsn(dsn: str | None, *, auto_init: bool = True) -> str:
    """--dsn, else $PGDURABLE_DSN (click fills it in), else the embedded development server,
    whose schema is installed on first use, as App does."""
    if dsn:
        return dsn
    from pgdurable._embedded import embedded_dsn

    try:
        found = embedded_dsn()
    except RuntimeError as exc:
        raise click.UsageError(
            f"{exc}. (The CLI takes the database from --dsn or $PGDURABLE_DSN.)"
        ) from exc
    if auto_init:
        with connect(found) as conn, errors(found):
            init_schema(conn)
    return found


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or a ClickException that names the server tried."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as exc:
        raise click.UsageError(
            f"invalid DSN: {_first_line(exc)}. Give a URI like "
            "postgresql://user@host:5432/dbname or key=value pairs"
        ) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {_first_line(exc)}. "
            "Check that the server is up and the DSN (--dsn or $PGDURABLE_DSN) is right"
        ) from exc


@contextlib.contextmanager
def errors(dsn: str) -> Iterator[None]:
    """Turn the expected failures of a command into one-line messages without a traceback."""
    try:
        yield
    except RunNotFound as exc:
        raise NotFound(f"{exc}. List runs with `pgdurable runs`") from exc
    except (PgDurableError, PermissionError) as exc:
        raise click.ClickException(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(
            f"lost the connection to PostgreSQL at {describe_dsn(dsn)}: {_first_line(exc)}. "
            "Run the command again once the server is reachable"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise click.ClickException(
            f"permission denied on {describe_dsn(dsn)}: {_first_line(exc)}. Use a role that "
            "owns the pgdurable schema or has been granted access to it"
        ) from exc


@contextlib.contextmanager
def session(dsn: str | None) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a database whose schema is current, for the commands that read runs."""
    url = resolve_dsn(dsn)
    with connect(url) as conn, errors(url):
        check_schema(conn)
        yield conn


def find_run(conn: psycopg.Connection[Any], key: str) -> tuple[Any, str, str]:
    """(run id, workflow_id, workflow_name) of a run named by its id or its workflow_id."""
    row = conn.execute(Q["run_by_workflow_id"], {"key": key}).fetchone()
    if row is None:
        raise NotFound(f"no run has id or workflow_id {key!r}. List runs with `pgdurable runs`")
    return row[0], row[1], row[2]


def call(conn: psycopg.Connection[Any], name: str, params: Sequence[Any]) -> Any:
    """The single value a named engine call returns (its SQLSTATEs become pgdurable errors)."""
    row = call_sql(conn, name, params).fetchone()
    return None if row is None else row[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- durations -------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)([smhdw])")


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """30s, 15m, 12h, 7d, 2w, or a sum of them such as 1d12h."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        if not text or _DURATION.sub("", text):
            self.fail(
                f"{value!r} is not a duration: use a number and a unit, s m h d or w "
                "(30s, 15m, 12h, 7d, 1d12h)",
                param,
                ctx,
            )
        return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text)))


def format_duration(value: timedelta) -> str:
    """The short form Duration reads: 7d, 1d12h, 30s."""
    left = int(value.total_seconds())
    parts = []
    for unit in "dhms":
        count, left = divmod(left, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# --- loading an App ----------------------------------------------------------------------------


def load_app(spec: str) -> pgdurable.App:
    """The App named by MODULE:ATTR; ATTR may be a callable that returns one."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(
            f"{spec!r} is not MODULE:ATTR: name the module and the App in it, "
            "e.g. `pgdurable worker myproject.tasks:app`"
        )
    # Like other Python runners, import from the directory the command is run in.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise click.UsageError(
                f"cannot import module {module_name!r} ({exc}): run the command from the "
                "directory that contains it, or add that directory to PYTHONPATH"
            ) from exc
        _echo_traceback()
        raise click.ClickException(
            f"importing module {module_name!r} failed: {exc} (traceback above)"
        ) from exc
    except Exception as exc:
        _echo_traceback()
        raise click.ClickException(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc} (traceback above)"
        ) from exc
    try:
        target = getattr(module, attr)
    except AttributeError as exc:
        apps = sorted(n for n, v in vars(module).items() if isinstance(v, pgdurable.App))
        hint = f": it has {', '.join(apps)}" if apps else ""
        raise click.UsageError(
            f"module {module_name!r} has no attribute {attr!r}{hint}. "
            "Name the pgdurable.App as MODULE:ATTR"
        ) from exc
    if not isinstance(target, pgdurable.App) and callable(target):
        try:
            target = target()
        except Exception as exc:
            _echo_traceback()
            raise click.ClickException(
                f"calling {spec} to get the App raised {type(exc).__name__}: {exc} "
                "(traceback above)"
            ) from exc
    if not isinstance(target, pgdurable.App):
        raise click.UsageError(
            f"{spec} is a {type(target).__name__}, not a pgdurable.App (nor a callable "
            "returning one)"
        )
    return target


def _echo_traceback() -> None:
    click.echo(traceback.format_exc(), err=True)
