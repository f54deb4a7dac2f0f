"""Helpers shared by the engine tests: waiting on conditions, workers in threads, SQL probes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

import pgdurable

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T], timeout: float = 15.0, every: float = 0.02) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} (last: {value!r})"
            )
        time.sleep(every)


def query(dsn: str, sql: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit connection (immune to other broken ones)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: Any, params: Any = None) -> Any:
    rows = query(dsn, sql, params)
    return rows[0][0] if rows else None


def shift_clock(dsn: str, by: str) -> None:
    query(dsn, "select pgdurable.shift_clock(%s::interval)", (by,))


def run_status(dsn: str, run_id: Any) -> str | None:
    return scalar(dsn, "select status from pgdurable.runs where id = %s", (run_id,))


def wait_status(dsn: str, run_id: Any, status: str, timeout: float = 15.0) -> None:
    wait_until(f"run {run_id} to be {status}", lambda: run_status(dsn, run_id) == status, timeout)


@contextmanager
def running_worker(
    app: pgdurable.App, concurrency: int = 4, poll_interval: float = 0.05, **kw: Any
) -> Iterator[pgdurable.Worker]:
    """A worker of ``app`` running in a thread for the duration of the block."""
    worker = app.worker(concurrency=concurrency, poll_interval=poll_interval, **kw)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(10), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)
        assert not thread.is_alive(), "worker did not stop within 20 s"
    assert not errors, f"worker.run() raised {errors[0]!r}"


def wait_for_file(path: str | Path, timeout: float = 60.0) -> None:
    """Block (inside a step) until the test creates ``path``: a gate the test opens."""
    wait_until(f"gate file {path}", Path(path).exists, timeout, every=0.01)


def listeners(dsn: str) -> int:
    """How many sessions of the database LISTEN for runnable runs (one per started worker)."""
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and query ilike 'listen pgdurable_wake%%'",
        )
    )


TESTS = Path(__file__).resolve().parent.parent


@contextmanager
def spawn_workers(
    module: str, env: dict[str, str], log_dir: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """A ``spawn(concurrency)`` starting ``python -m apps.run_worker MODULE N`` processes (a log
    each in log_dir); the ones still alive at the end of the block are killed (SIGKILL ends a
    stopped one too)."""
    procs: list[subprocess.Popen[bytes]] = []
    name = module.rsplit(".", 1)[-1]

    def spawn(concurrency: int = 2) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "apps.run_worker", module, str(concurrency)]
        with open(log_dir / f"{name}-worker{len(procs)}.log", "wb") as log:
            procs.append(
                subprocess.Popen(cmd, cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        return procs[-1]

    try:
        yield spawn
    finally:
        for proc in (p for p in procs if p.poll() is None):
            proc.kill()
            proc.wait(10)
