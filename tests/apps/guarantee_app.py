"""Workflows the guarantee tests run in worker processes (``python -m apps.run_worker
apps.guarantee_app N``) and in the test process itself.

Every step records what it did in ``guarantee_notes`` (or ``guarantee_effects``) on a
connection of its own, with the run attempt and the process id, so a test can tell which
process executed what and how often. A run blocks at ``<gate_dir>/<attempt>`` until the test
creates that file: the zombie (attempt 1) and the new owner (attempt 2) wait at different gates.
$GUARANTEE_LEASE sets the App's lease in seconds (default 60: long enough that no heartbeat
comes due while a test runs, so a resumed zombie does not learn from one that it lost its runs).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import psycopg

import pgdurable

from .support import spawn_workers, wait_for_file

TABLES = """
create table if not exists guarantee_notes (
    tag text not null, what text not null, attempt integer not null, pid integer not null);
create table if not exists guarantee_effects (
    tag text not null, attempt integer not null, pid integer not null);
"""


def prepare(dsn: str) -> None:
    """Create the application tables the workflows write to."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES)


def _attempt() -> int:
    run = pgdurable.current_run()
    assert run is not None, "only called inside a run"
    return run.attempt


def note(dsn: str, tag: str, what: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into guarantee_notes values (%s, %s, %s, %s)",
            (tag, what, _attempt(), os.getpid()),
        )


def hold(dsn: str, tag: str, gate_dir: str) -> int:
    """Note that this attempt started, block at its gate, note that it resumed."""
    attempt = _attempt()
    note(dsn, tag, "started")
    wait_for_file(Path(gate_dir) / str(attempt), timeout=90)
    note(dsn, tag, "resumed")
    return attempt


def build(dsn: str) -> pgdurable.App:
    app = pgdurable.App(dsn, lease=float(os.environ.get("GUARANTEE_LEASE", "60")))

    @app.step()
    def held_step(tag: str, gate_dir: str) -> str:
        return f"attempt {hold(dsn, tag, gate_dir)}"

    # A zombie's first attempt fails after its gate, so that it retries in place and, asked to
    # stop meanwhile, hands the run back: with the attempt it holds, which is stale by then.
    @app.step(retry=pgdurable.Retry(max_attempts=200, initial_delay=0.1, backoff=1, jitter=False))
    def failing_while_zombie(tag: str, gate_dir: str) -> str:
        attempt = hold(dsn, tag, gate_dir)
        if attempt == 1:
            note(dsn, tag, "failed")
            raise RuntimeError("the zombie's attempt fails, to retry in place")
        return f"attempt {attempt}"

    @app.workflow(name="g.checkpoint")
    def checkpoint(tag: str, gate_dir: str) -> str:
        """A zombie resumed here writes the step's checkpoint next."""
        return held_step(tag, gate_dir)

    @app.workflow(name="g.complete")
    def complete(tag: str, gate_dir: str) -> str:
        """A zombie resumed here completes the run next (no durable operation in between)."""
        return f"attempt {hold(dsn, tag, gate_dir)}"

    @app.workflow(name="g.handback")
    def handback(tag: str, gate_dir: str) -> str:
        """A zombie resumed here and asked to stop hands the run back."""
        return failing_while_zombie(tag, gate_dir)

    @app.step()
    def effect(tag: str) -> int:
        # Its own connection, not a transaction step: a run executed twice shows up twice.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into guarantee_effects values (%s, %s, %s)",
                (tag, _attempt(), os.getpid()),
            )
        return os.getpid()

    @app.workflow(name="g.effect")
    def one_effect(tag: str) -> int:
        return effect(tag)

    return app


Spawn = Callable[..., "subprocess.Popen[bytes]"]


def worker_processes(env: dict[str, str], log_dir: Path) -> ContextManager[Spawn]:
    """Worker processes of this app, started by ``spawn()``; killed at the end of the block."""
    return spawn_workers("apps.guarantee_app", env, log_dir)
