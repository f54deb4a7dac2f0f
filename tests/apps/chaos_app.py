"""Workflows of the fault-injection test (tests/test_chaos.py), run by real worker processes:
``PGDURABLE_DSN=... pgdurable worker apps.chaos_app:app`` (from tests/).

A run of ``chaos.flow`` executes a plan of operations the test drew from a seeded RNG:

- ``noop``: a step that only returns;
- ``flaky1`` / ``flaky2``: a step that fails its first 1 or 2 attempts, counted in
  ``chaos_attempts`` so the count survives crashed workers (deterministic per run);
- ``tx``: a transaction step inserting one row into ``chaos_effects``, a table WITHOUT a unique
  key: an effect applied twice would show as two rows;
- ``sleep``: a short durable sleep;
- ``event``: a durable wait for the event ``chaos:<run key>``, which the test emits;
- ``child``: a child run of ``chaos.leaf`` (a step and a transaction of its own), awaited.

The result lists what each operation returned, so the test can check it against the plan.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

import pgdurable

LEASE = 2.0
"""Short, so that a worker stopped with SIGSTOP loses its runs within a few seconds."""

TABLES = """
create table if not exists chaos_effects (
    run_key text not null, k integer not null, attempt integer not null, pid integer not null,
    at timestamptz not null default clock_timestamp());
create table if not exists chaos_attempts (
    run_key text not null, k integer not null, pid integer not null);
"""

KINDS = ("noop", "flaky1", "flaky2", "tx", "sleep", "event", "child")

# Generous: the flaky step's own connection can meet a server restart or a killed backend,
# and running out of attempts would fail the run for the test's fault, not the engine's.
FLAKY_RETRY = pgdurable.Retry(max_attempts=20, initial_delay=0.05, backoff=2.0, max_delay=1.0)


class Flaky(Exception):
    """The planned failure of a flaky step."""


def prepare(dsn: str) -> None:
    """Create the application tables the workflows write to."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES)


def event_name(run_key: str) -> str:
    return f"chaos:{run_key}"


def expected_result(run_key: str, ops: list[str]) -> list[Any]:
    """What ``chaos.flow(run_key, ops)`` returns when every operation did its job once."""
    out: list[Any] = []
    for k, op in enumerate(ops):
        if op == "sleep":
            out.append("slept")
        elif op == "event":
            out.append({"for": run_key})
        elif op == "child":
            out.append(f"{run_key}/{k}:leaf")
        else:
            out.append(k)
    return out


def build(dsn: str | None = None) -> pgdurable.App:
    """The chaos App; ``dsn`` None means $PGDURABLE_DSN (read when the App is created)."""
    app = pgdurable.App(dsn or os.environ.get("PGDURABLE_DSN"), lease=LEASE)

    def own_dsn() -> str:
        return app.dsn

    @app.step()
    def noop(k: int) -> int:
        return k

    @app.step(retry=FLAKY_RETRY)
    def flaky(run_key: str, k: int, failures: int) -> int:
        with psycopg.connect(own_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "insert into chaos_attempts values (%s, %s, %s)", (run_key, k, os.getpid())
            )
            row = conn.execute(
                "select count(*) from chaos_attempts where run_key = %s and k = %s", (run_key, k)
            ).fetchone()
        attempts = row[0] if row else 0
        if attempts <= failures:
            raise Flaky(f"{run_key} op {k}: planned failure {attempts} of {failures}")
        return k

    @app.transaction()
    def effect(conn: psycopg.Connection[Any], run_key: str, k: int) -> int:
        run = pgdurable.current_run()
        conn.execute(
            "insert into chaos_effects (run_key, k, attempt, pid) values (%s, %s, %s, %s)",
            (run_key, k, run.attempt if run else 0, os.getpid()),
        )
        return k

    @app.workflow(name="chaos.leaf")
    def leaf(run_key: str) -> str:
        noop(0)
        effect(run_key, 0)
        return f"{run_key}:leaf"

    @app.workflow(name="chaos.flow")
    def flow(run_key: str, ops: list[str]) -> list[Any]:
        out: list[Any] = []
        for k, op in enumerate(ops):
            if op == "noop":
                out.append(noop(k))
            elif op in ("flaky1", "flaky2"):
                out.append(flaky(run_key, k, int(op[-1])))
            elif op == "tx":
                out.append(effect(run_key, k))
            elif op == "sleep":
                pgdurable.sleep(0.2)
                out.append("slept")
            elif op == "event":
                out.append(pgdurable.wait_for_event(event_name(run_key)))
            elif op == "child":
                out.append(leaf(f"{run_key}/{k}"))
            else:
                raise pgdurable.NonRetryableError(f"unknown chaos operation {op!r}")
        return out

    return app


app = build()
