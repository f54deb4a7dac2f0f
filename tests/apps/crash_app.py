"""Workflows the crash tests kill workers in. Every step records each execution in
``side_effects`` on a connection of its own, so a test can count how often it really ran."""

from __future__ import annotations

import os
from typing import Any

import psycopg

import pgdurable

from .flavours import FlavouredApp
from .support import wait_for_file

TABLES = """
create table if not exists side_effects (tag text not null, what text not null, pid integer);
create table if not exists orders (tag text not null, attempt integer not null);
"""


def prepare(dsn: str) -> None:
    """Create the application tables the workflows write to."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES)


def note(dsn: str, tag: str, what: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into side_effects values (%s, %s, %s)", (tag, what, os.getpid()))


def build(dsn: str, lease: float = 2.0) -> pgdurable.App:
    app: pgdurable.App = FlavouredApp(dsn, lease=lease)

    @app.step()
    def mark(tag: str, what: str) -> str:
        note(dsn, tag, what)
        return what

    @app.step()
    def gated(tag: str, what: str, gate: str) -> str:
        note(dsn, tag, f"{what}-start")
        wait_for_file(gate)
        note(dsn, tag, what)
        return what

    @app.transaction()
    def write_order(conn: psycopg.Connection[Any], tag: str, gate: str) -> int:
        run = pgdurable.current_run()
        attempt = run.attempt if run else 0
        conn.execute("insert into orders values (%s, %s)", (tag, attempt))
        # Tell the test we are inside the open transaction, then hold it open until the gate.
        note(dsn, tag, "tx-inside")
        wait_for_file(gate)
        return attempt

    @app.workflow(name="crash.replay")
    def replay(tag: str, gate: str) -> list[str]:
        return [mark(tag, "s1"), gated(tag, "s2", gate)]

    @app.workflow(name="crash.tx")
    def tx(tag: str, gate: str) -> str:
        write_order(tag, gate)
        return mark(tag, "after-tx")

    @app.workflow(name="crash.term")
    def term(tag: str, gate: str) -> list[str]:
        return [gated(tag, "s1", gate), mark(tag, "s2")]

    return app
