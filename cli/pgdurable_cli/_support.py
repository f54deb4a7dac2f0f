"""What the commands share: finding the database, connecting, turning errors into messages."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

import pgdurable
from pgdurable._db import call_sql
from pgdurable._errors import PgDurableError, RunNotFound
from pgdurable._queries import Q
from pgdurable._schema import check_schema, init_schema
from pgdurable._starting import run_key

from ._output import safe


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
    return safe(hide_password(f"{user + '@' if user else ''}{host}:{port}/{dbname}", dsn))


# The password of a URI (up to the last @ of its authority) and of key=value or ?query pairs.
_URI_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^/?#]*@")
_PAIR_PASSWORD = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'"]*)""", re.I)


def _passwords(dsn: str) -> list[str]:
    """What of the DSN may be (part of) its password and may show in an error message.

    libpq quotes no password of a DSN it parsed, only a host name, which an unescaped @ in a
    URI password turns into ("u:pw@rd@db" is host "rd@db"). A DSN that does not parse may be
    quoted whole: then every password-like part of it counts.
    """
    try:
        host = str(conninfo_to_dict(dsn).get("host") or "")
    except psycopg.ProgrammingError:
        uri = re.search(r"://[^:/?#@\s]*:([^/?#]*)@", dsn)
        found = [uri.group(1), unquote(uri.group(1))] if uri else []
        found += [m.group(2).strip("'") for m in _PAIR_PASSWORD.finditer(dsn)]
    else:
        stray = host.rpartition("@")[0]
        found = [stray, *stray.split("@")]
    return sorted({p for p in found if p}, key=len, reverse=True)


def hide_password(text: str, dsn: str) -> str:
    """``text`` (an error message, say) with the DSN's password masked wherever it shows."""
    text = _URI_PASSWORD.sub(r"\1***@", text)
    text = _PAIR_PASSWORD.sub(r"\1***", text)
    for secret in _passwords(dsn):
        # A very short password is masked where the patterns find it, not in every word.
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


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


def embedded_warning(app: pgdurable.App) -> str | None:
    """What a worker must say before it falls back to the embedded development database, or
    None when it was given a database (--dsn, the App's dsn=, or $PGDURABLE_DSN)."""
    if app._dsn is not None:
        return None
    from pgdurable._embedded import data_dir

    return (
        "no database given (no --dsn, no dsn= on the App, no $PGDURABLE_DSN): this worker uses "
        f"the embedded DEVELOPMENT database in {data_dir()}, private to this machine. "
        "Production workers must pass --dsn or set PGDURABLE_DSN"
    )


def warn_loudly(logger: logging.Logger, message: str) -> None:
    """A warning that shows even when the log level hides warnings."""
    if logger.isEnabledFor(logging.WARNING):
        logger.warning(message)
    else:
        click.echo(f"WARNING: {message}", err=True)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or a ClickException that names the server tried. It never
    prepares statements: a command runs each a few times at most, and a transaction pooler
    (docs/poolers.md) may lend each statement another server connection."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None)
    except psycopg.ProgrammingError as exc:
        raise click.UsageError(
            f"invalid DSN: {reason(exc, dsn)}. Give a URI like "
            "postgresql://user@host:5432/dbname or key=value pairs"
        ) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {reason(exc, dsn)}. "
            "Check that the server is up and the DSN (--dsn or $PGDURABLE_DSN) is right"
        ) from exc


@contextlib.contextmanager
def errors(dsn: str) -> Iterator[None]:
    """Turn the expected failures of a command into one-line messages without a traceback."""
    try:
        yield
    except RunNotFound as exc:
        raise NotFound(f"{reason(exc, dsn)}. List runs with `pgdurable runs`") from exc
    except (PgDurableError, PermissionError) as exc:
        raise click.ClickException(safe(hide_password(str(exc), dsn))) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(
            f"lost the connection to PostgreSQL at {describe_dsn(dsn)}: {reason(exc, dsn)}. "
            "Run the command again once the server is reachable"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise click.ClickException(
            f"permission denied on {describe_dsn(dsn)}: {reason(exc, dsn)}. Use a role that "
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
    row = conn.execute(Q["run_by_workflow_id"], run_key(key)).fetchone()
    if row is None:
        raise NotFound(
            f"no run has id or workflow_id {safe(repr(key))}. List runs with `pgdurable runs`"
        )
    return row[0], row[1], row[2]


def call(conn: psycopg.Connection[Any], name: str, params: Sequence[Any]) -> Any:
    """The single value a named engine call returns (its SQLSTATEs become pgdurable errors)."""
    row = call_sql(conn, name, params).fetchone()
    return None if row is None else row[0]


def reason(exc: BaseException, dsn: str) -> str:
    """The first line of an error, safe to print: no password, no control character."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return safe(hide_password(first, dsn))


# --- options shared by commands ----------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def dsn_option(fn: F) -> F:
    return click.option(
        "--dsn",
        envvar="PGDURABLE_DSN",
        show_envvar=True,
        metavar="DSN",
        help="PostgreSQL to use (URI or key=value). Default: $PGDURABLE_DSN, else the "
        "embedded development server (pip install 'pgdurable[embedded]').",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )


# --- numbers -------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)([smhdw])")
MAX_DURATION = timedelta(days=36500)  # 100 years: far beyond any retention, far inside PG's range


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """30s, 15m, 12h, 7d, 2w, or a sum of them such as 1d12h; at most 100 years (36500d)."""

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
        limit = int(MAX_DURATION.total_seconds())
        parts = _DURATION.findall(text)
        # Digits are counted before int() so a 5,000-digit number is not even converted.
        if any(len(n.lstrip("0")) > 12 for n, _ in parts) or (
            sum(int(n) * _UNITS[u] for n, u in parts) > limit
        ):
            self.fail(
                f"{value!r} is longer than the maximum duration, 36500d (100 years)", param, ctx
            )
        return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


class Seconds(click.FloatRange):
    """A finite number of seconds within the range (FloatRange alone lets nan through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


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
    """The App named by MODULE:ATTR; ATTR may be a function or class that returns one."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(
            f"{spec!r} is not MODULE:ATTR: name the module and the App in it, "
            "e.g. `pgdurable worker myproject.tasks:app`"
        )
    module = _import(module_name)
    apps = sorted(n for n, v in vars(module).items() if isinstance(v, pgdurable.App))
    try:
        target = getattr(module, attr)
    except AttributeError as exc:
        hint = f": it has {', '.join(apps)}" if apps else ""
        raise click.UsageError(
            f"module {module_name!r} has no attribute {attr!r}{hint}. "
            "Name the pgdurable.App as MODULE:ATTR"
        ) from exc
    if isinstance(target, pgdurable.App):
        return target
    have = _apps_hint(module_name, apps)
    _refuse_pgdurable_object(spec, target, have)
    if inspect.isfunction(target) or inspect.isclass(target):
        target = _call_factory(spec, target, have)
    if not isinstance(target, pgdurable.App):
        raise click.UsageError(
            f"{spec} is a {type(target).__name__}, not a pgdurable.App (nor a function or "
            f"class returning one). {have}"
        )
    return target


def _apps_hint(module_name: str, apps: list[str]) -> str:
    if not apps:
        return f"Module {module_name!r} has no pgdurable.App at module level"
    return (
        f"Module {module_name!r} has the App{'s' if len(apps) > 1 else ''} {', '.join(apps)}: "
        f"`pgdurable worker {module_name}:{apps[0]}`"
    )


def _import(module_name: str) -> Any:
    # Like other Python runners, import from the directory the command is run in.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
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


_KINDS = {"WorkflowCall": "workflow with options", "RunHandle": "run handle"}


def _refuse_pgdurable_object(spec: str, target: Any, have: str) -> None:
    """A workflow, step or transaction named instead of the App is a typo, never a factory:
    calling one would run its body (a real run, or a side effect) before any check."""
    owner = target if inspect.isclass(target) else type(target)
    if getattr(owner, "__module__", "").partition(".")[0] != "pgdurable":
        return
    if inspect.isclass(target):
        what = f"the class pgdurable.{owner.__name__}"
    else:
        name = getattr(target, "name", None)
        kind = _KINDS.get(owner.__name__, owner.__name__.lower())
        what = f"a pgdurable {kind}" + (f" ({name!r})" if isinstance(name, str) else "")
    raise click.UsageError(f"{spec} is {what}, not a pgdurable.App. {have}")


def _call_factory(spec: str, factory: Any, have: str) -> Any:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise click.UsageError(
            f"{spec} takes arguments, so it is not an App factory (those are called with "
            f"none). {have}"
        ) from None
    except ValueError:
        pass  # no signature to inspect (some builtins): let the call decide
    try:
        return factory()
    except Exception as exc:
        _echo_traceback()
        raise click.ClickException(
            f"calling {spec} to get the App raised {type(exc).__name__}: {exc} (traceback above)"
        ) from exc


def _echo_traceback() -> None:
    click.echo(traceback.format_exc(), err=True)
