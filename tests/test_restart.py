"""Server restarts: the PostgreSQL server the test owns is restarted under a busy worker, an
idle worker and a client App.

Each must work again within moments of the server accepting connections (not after walking
its pool's dead connections with backoff up to a pool timeout), and a healthy run must not pay
for restarts out of its crash-recovery budget: they are not its fault.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.support import query, scalar, wait_until
from owned_server import OwnedServer, owned_pg_fixture  # noqa: F401 (fixture owned_pg)

pytestmark = pytest.mark.slow

LEASE = 2.0
RESUME_WITHIN = 3.0
"""Seconds after the server accepts connections again by which a worker must be claiming."""

MARKS = """
create table if not exists restart_marks (
    tag text not null, k integer not null, attempt integer not null,
    at double precision not null default extract(epoch from clock_timestamp()))
"""


def build(dsn: str) -> pgdurable.App:
    """Workflows whose every step is followed by a transaction recording when it committed."""
    query(dsn, MARKS)
    app = pgdurable.App(dsn, lease=LEASE)

    @app.step()
    def work(k: int) -> int:
        time.sleep(0.2)
        return k

    @app.step()
    def tick(gate: str) -> bool:
        time.sleep(0.2)
        return Path(gate).exists()

    @app.transaction()
    def mark(conn: psycopg.Connection[Any], tag: str, k: int) -> int:
        run = pgdurable.current_run()
        conn.execute(
            "insert into restart_marks (tag, k, attempt) values (%s, %s, %s)",
            (tag, k, run.attempt if run else 0),
        )
        return k

    @app.workflow(name="restart.busy")
    def busy(tag: str, steps: int) -> int:
        for k in range(steps):
            work(k)
            mark(tag, k)
        return steps

    @app.workflow(name="restart.marathon")
    def marathon(tag: str, gate: str) -> int:
        for k in range(5000):
            done = tick(gate)
            mark(tag, k)
            if done:
                return k + 1
        raise pgdurable.NonRetryableError("the gate never opened")

    return app


class Warnings(logging.Handler):
    """Collects the worker's warnings (pgdurable and the connection pool) as evidence."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        self.records.append((record.created, f"{record.name}: {text[:160]}"))

    def since(self, start: float, ref: float) -> str:
        """The warnings from time.time() ``start`` on, stamped in seconds after ``ref``."""
        lines = [f"  {at - ref:+7.2f} s {text}" for at, text in self.records if at >= start]
        return "\n".join(
            lines[:25] + ([f"  ... {len(lines) - 25} more"] if len(lines) > 25 else [])
        )


@contextmanager
def worker_thread(app: pgdurable.App, concurrency: int) -> Iterator[Warnings]:
    """A worker of ``app`` (default poll interval) in a thread; its warnings are collected."""
    tap = Warnings()
    loggers = [logging.getLogger("pgdurable"), logging.getLogger("psycopg.pool")]
    for lg in loggers:
        lg.addHandler(tap)
    worker = app.worker(concurrency=concurrency)
    thread = threading.Thread(target=worker.run, name="restart-test-worker", daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(10), "worker did not start"
        yield tap
    finally:
        worker.stop()
        # Longer than a pool timeout: a worker blocked on the pool must still get to stop.
        thread.join(45)
        for lg in loggers:
            lg.removeHandler(tap)
        app.close()
    assert not thread.is_alive(), "the worker did not stop within 45 s"


def marks_after(dsn: str, tag_like: str, t: float) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "select tag, k, attempt, at from restart_marks where tag like %s and at > %s order by at",
        (tag_like, t),
    )


def duplicated_marks(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "select tag, k, count(*) from restart_marks group by tag, k having count(*) <> 1",
    )


def start(dsn: str, app: pgdurable.App, name: str, args: list[Any], **options: Any) -> Any:
    """Start a run on a connection of the test's own: the test's calls never wait on the pool
    under test."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return app.start(name, args, conn=conn, **options).run_id


def wait_completed(dsn: str, run_ids: list[Any], timeout: float) -> None:
    def probe() -> bool:
        rows = query(dsn, "select status from pgdurable.runs where id = any(%s)", (run_ids,))
        ended = [r[0] for r in rows if r[0] in ("failed", "cancelled")]
        assert not ended, f"runs ended {ended}"
        return sum(1 for r in rows if r[0] == "completed") == len(run_ids)

    wait_until(f"{len(run_ids)} runs to complete", probe, timeout=timeout)


def warm_pool(dsn: str, app: pgdurable.App, concurrency: int) -> int:
    """A burst that keeps every worker slot busy at once grows the pool to a connection per
    slot, which then stays open and idle, as in any worker between bursts. Returns how many
    connections sit idle in the pool."""
    burst = [start(dsn, app, "restart.busy", [f"w{i}", 2]) for i in range(concurrency)]
    wait_completed(dsn, burst, timeout=30)
    idle = int(app.pool.get_stats().get("pool_available", 0))
    assert idle >= concurrency // 2, f"the pool kept {idle} idle connections"
    return idle


def assert_resumed(
    owned_pg: OwnedServer, dsn: str, tap: Warnings, took: float, idle: int, what: str
) -> None:
    """The first step after the restart committed within RESUME_WITHIN s of the server being
    ready again."""
    ready = owned_pg.ready_at
    assert ready is not None
    # Generous enough to measure how long a stalled worker really takes (a pool timeout is
    # 30 s); the bound itself is asserted below.
    first = wait_until(
        "a step committed after the restart", lambda: marks_after(dsn, "%", ready), timeout=40
    )[0]
    resumed_after = first[3] - ready
    print(
        f"\n{what}: restart took {took:.2f} s with {idle} idle pool connections; first step "
        f"committed {resumed_after:.2f} s after the server accepted connections"
    )
    assert resumed_after <= RESUME_WITHIN, (
        f"{what}: the worker resumed {resumed_after:.1f} s after the server accepted "
        f"connections again (bound {RESUME_WITHIN} s); its warnings, in seconds after the "
        f"server was ready:\n{tap.since(ready - took - 0.5, ready)}"
    )


def test_claims_resume_within_seconds_of_a_server_restart(owned_pg: OwnedServer) -> None:
    dsn = owned_pg.dsn
    app = build(dsn)
    concurrency, in_flight, pending, steps = 8, 3, 12, 3
    with worker_thread(app, concurrency) as tap:
        idle = warm_pool(dsn, app, concurrency)
        # Busy: long runs in flight, and more runs pending that fall due just after the
        # restart.
        runs = [start(dsn, app, "restart.busy", [f"b{i}", 25]) for i in range(in_flight)]
        wait_until(
            "the long runs to be in flight",
            lambda: (
                scalar(dsn, "select count(distinct tag) from restart_marks where tag like 'b%%'")
                == in_flight
            ),
            timeout=20,
        )
        runs += [
            start(dsn, app, "restart.busy", [f"p{i}", steps], delay=0.5) for i in range(pending)
        ]
        took = owned_pg.restart("immediate")
        assert_resumed(owned_pg, dsn, tap, took, idle, "busy worker")
        wait_completed(dsn, runs, timeout=40)

    rows = query(dsn, "select status, count(*) from pgdurable.runs group by status")
    assert rows == [("completed", concurrency + in_flight + pending)], f"runs by status: {rows}"
    assert scalar(dsn, "select count(*) from restart_marks") == (
        concurrency * 2 + in_flight * 25 + pending * steps
    )
    assert duplicated_marks(dsn) == []


def test_an_idle_worker_claims_within_seconds_of_a_server_restart(
    owned_pg: OwnedServer,
) -> None:
    # No run in flight sees the connection break: the worker learns of the restart only from
    # the pool, at its next claim.
    dsn = owned_pg.dsn
    app = build(dsn)
    concurrency = 8
    with worker_thread(app, concurrency) as tap:
        idle = warm_pool(dsn, app, concurrency)
        took = owned_pg.restart("immediate")
        runs = [start(dsn, app, "restart.busy", [f"i{i}", 2]) for i in range(4)]
        assert_resumed(owned_pg, dsn, tap, took, idle, "idle worker")
        wait_completed(dsn, runs, timeout=40)
    assert duplicated_marks(dsn) == []


def test_a_client_app_starts_runs_within_seconds_of_a_server_restart(
    owned_pg: OwnedServer,
) -> None:
    # The same pool serves App.start(), handles and emit_event in a web process: after a
    # restart its first call must not walk every dead idle connection with backoff.
    dsn = owned_pg.dsn
    app = build(dsn)
    try:
        with contextlib.ExitStack() as held:
            # Concurrent requests grow the pool to its size; then its connections sit idle.
            for _ in range(app.pool.max_size):
                held.enter_context(app.pool.connection())
        idle = int(app.pool.get_stats().get("pool_available", 0))
        assert idle >= 3, f"the pool kept {idle} idle connections"
        owned_pg.restart("immediate")
        began = time.monotonic()
        handle = app.start("restart.busy", ["c", 1])
        took = time.monotonic() - began
        print(f"\nclient: App.start() with {idle} idle pool connections took {took:.2f} s")
        assert took <= RESUME_WITHIN, (
            f"App.start() took {took:.1f} s right after a server restart, with {idle} dead idle "
            f"connections in its pool (bound {RESUME_WITHIN} s)"
        )
        assert handle.status() == "pending"
    finally:
        app.close()


def run_state(dsn: str, run_id: Any) -> tuple[Any, ...]:
    """(status, attempt, recoveries, note) of a run."""
    return query(
        dsn,
        "select status, attempt, recoveries, note from pgdurable.runs where id = %s",
        (run_id,),
    )[0]


def restart_with_outage(owned_pg: OwnedServer, outage: float) -> float:
    """Stop the server immediately, keep it down ``outage`` seconds, start it again."""
    started = time.monotonic()
    owned_pg.stop("immediate")
    # The outage is the fault itself, not a wait for a condition: long enough for the run's
    # lease to expire while its worker cannot reach the server to hand it back.
    time.sleep(outage)
    owned_pg.start()
    return time.monotonic() - started


def test_a_healthy_run_survives_restarts_beyond_its_recovery_budget(
    owned_pg: OwnedServer, tmp_path: Path
) -> None:
    dsn = owned_pg.dsn
    app = build(dsn)
    gate = tmp_path / "gate"
    run_id = start(dsn, app, "restart.marathon", ["m", str(gate)], max_recoveries=2)
    restarts = 6
    downtimes: list[float] = []
    resumed: list[float] = []
    with worker_thread(app, concurrency=2) as tap:
        wait_until("the run to commit a step", lambda: marks_after(dsn, "m", 0), timeout=20)
        for i in range(restarts):
            # Every other restart keeps the server down past the lease: the worker cannot hand
            # the run back, its lease expires, and the server comes back with it expired.
            outage = LEASE + 1.0 if i % 2 else 0.0
            downtimes.append(restart_with_outage(owned_pg, outage))
            ready = owned_pg.ready_at
            assert ready is not None

            def progressed(t: float = ready, n: int = i + 1) -> bool:
                if marks_after(dsn, "m", t):
                    return True
                state = run_state(dsn, run_id)
                assert state[0] in ("pending", "running"), (
                    f"after restart {n} of {restarts} the run is {state}; worker warnings, in "
                    f"seconds after the server was ready:\n{tap.since(t - 5, t)}"
                )
                return False

            # Bounded so that six stalled restarts still fail within the test's timeout.
            wait_until(f"the run to commit a step after restart {i + 1}", progressed, timeout=12)
            resumed.append(marks_after(dsn, "m", ready)[0][3] - ready)
        gate.touch()
        wait_completed(dsn, [run_id], timeout=30)
        steps = scalar(dsn, "select output from pgdurable.runs where id = %s", (run_id,))

    row = run_state(dsn, run_id)
    print(
        f"\n{restarts} restarts (down {', '.join(f'{d:.2f}' for d in downtimes)} s, the run "
        f"committed again {', '.join(f'{r:.2f}' for r in resumed)} s after each): run "
        f"{row[0]} after {row[1]} attempts, recoveries {row[2]}, note {row[3]!r}"
    )
    assert row[0] == "completed"
    assert scalar(dsn, "select count(*) from restart_marks where tag = 'm'") == steps
    assert duplicated_marks(dsn) == []
