"""The benchmark harness never rots (a tiny run of every workload), and the hot path's round
trips and commits per step are counted, because that count, unlike time, is stable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.waiting import Wait
from psycopg_pool import ConnectionPool

import pgdurable
from conftest import ROOT

EXPECTED = {
    ("floor", "select1"),
    ("floor", "insert_commit"),
    ("floor", "two_inserts"),
    ("W1", "noop_step"),
    ("W1A", "noop_step"),
    ("W1A", "noop_step_inline"),
    ("W2", "workflows_per_s"),
    ("W2", "steps_per_s"),
    ("W2L", "workflows_per_s_unconfigured"),
    ("W2L", "workflows_per_s_limit_1000"),
    ("W2L", "us_per_workflow_limit_1000"),
    ("W2L", "workflows_per_s_limit_4"),
    ("W2L", "max_running_limit_4"),
    ("W3", "transaction_step"),
    ("W4", "single_starts_per_s"),
    ("W4", "batched_starts_per_s"),
    ("WAKE", "start_to_first_step_p50"),
    ("WAKE", "start_to_first_step_p99"),
    ("WAKE", "event_to_next_step_p50"),
    ("SCALE", "claim_complete_finished_0"),
    ("CL", "claim_free_p50"),
    ("CL", "claim_limited_p50"),
    ("CL", "claim_free_p95"),
    ("CL", "claim_limited_p95"),
    ("CL", "buffers_free"),
    ("CL", "buffers_limited"),
    ("CL", "claim_free_p50_running_100"),
    ("CL", "claim_limited_p50_running_100"),
    ("MEM", "rss_idle"),
    ("MEM", "rss_after_all"),
    ("IMPORT", "import_pgdurable"),
    ("A1000", "active_steps_per_s"),
    ("A1000", "active_steps_per_s_parked"),
    ("A1000", "active_steps_per_s_held"),
    ("A1000", "parked_complete_s"),
    ("A1000", "held_complete_s"),
    ("A1000", "rss_parked"),
    ("A1000", "rss_held"),
    ("A1000", "connections_parked"),
    ("A1000", "connections_held"),
}


@pytest.mark.timeout(300)
def test_bench_smoke_prints_every_figure(server_dsn: str, tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--dsn", server_dsn, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    meta = rows[0]
    assert meta["workload"] == "meta" and meta["smoke"] is True
    assert {"shared_buffers", "synchronous_commit", "fsync", "wal_level"} <= set(meta["postgres"])
    figures = {(r["workload"], r["figure"]): r for r in rows[1:]}
    assert not [r for r in rows if r["figure"] == "error"]
    assert set(figures) >= EXPECTED, EXPECTED - set(figures)
    for key, row in figures.items():
        assert {"value", "unit", "ratio", "ratio_to", "goal", "met"} <= set(row), key
        if key == ("WAKE", "event_to_next_step_p50") and row["value"] is None:
            assert "not measured" in row["note"]
            continue
        assert isinstance(row["value"], (int, float)) and row["value"] > 0, key
        if row["goal"] is not None:
            assert isinstance(row["met"], bool), key
        if key[0] != "floor":
            assert row["ratio"] is not None and row["ratio"] > 0, key
    w3 = figures[("W3", "transaction_step")]
    assert w3["rows_verified"] == w3["rows_expected"] == w3["steps"]
    # Every parked run (timer fired, event emitted) and every held run came back with its value.
    for figure in ("parked_complete_s", "held_complete_s"):
        row = figures[("A1000", figure)]
        assert row["verified"] == row["runs"] > 0, row
    # Every claim of the claim-latency workload took a run, on both paths, out of the history
    # it was meant to run against; the limited path read its pending runs from runs_claim_idx.
    for figure in ("claim_free_p50", "claim_limited_p50"):
        row = figures[("CL", figure)]
        assert row["claims_with_a_run"] == row["claims"] == 100, row
        assert row["finished"] == 10_000 and row["pending_per_queue"] == 2000, row
    for figure in ("claim_free_p50_running_100", "claim_limited_p50_running_100"):
        row = figures[("CL", figure)]
        assert row["claims_with_a_run"] == row["claims"] == 50, row
    limited_plan = figures[("CL", "buffers_limited")]
    assert limited_plan["on_claim_idx"] is True, limited_plan
    assert "runs_claim_idx" in limited_plan["candidate_plan"], limited_plan
    assert "Seq Scan on runs" not in limited_plan["candidate_plan"], limited_plan
    # W2 on a queue limited to 4 (2 workers x 4 slots): the limit bound and was never exceeded.
    bound = figures[("W2L", "max_running_limit_4")]
    assert bound["met"] is True and 1 <= bound["value"] <= 4, bound
    assert bound["samples"] > 10 and bound["slots"] > 4, bound
    # The async lane's pool, not one connection per run: bounded whatever the parked count.
    held = figures[("A1000", "connections_held")]
    assert held["value"] < held["async_concurrency"], held
    assert (tmp_path / "results.md").read_text().count("\n| ") >= len(EXPECTED)
    assert (tmp_path / "ratios.png").stat().st_size > 1000


# --- round trips and commits per step ---------------------------------------------------------


class CountingConnection(psycopg.Connection[Any]):
    """Counts server round trips: psycopg runs each exchange with the server through wait(),
    and an exchange is a round trip when the client has to wait to read the server's answer
    (a statement queued in a pipeline is only sent: its answer is read with the next one)."""

    round_trips = 0

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return super().wait(_counting(gen), *args, **kwargs)


def _counting(gen: Any) -> Any:
    """``gen``, passed through, counting one round trip if it waited to read."""
    read = False
    try:
        state = next(gen)
        while True:
            # R: blocked until the server answers. RW (a pipeline sending) returns as soon as
            # the socket takes more data, without waiting for an answer.
            read = read or state == Wait.R
            ready = yield state
            state = gen.send(ready)
    except StopIteration as done:
        return done.value
    finally:
        if read:
            CountingConnection.round_trips += 1


def _commits(admin: psycopg.Connection[Any], dbname: str) -> int:
    """xact_commit of ``dbname`` once every backend of it has exited (and flushed its stats).

    Read from another database so that reading adds no transaction to the count."""
    deadline = time.monotonic() + 20
    last = -1
    while True:
        admin.execute("select pg_stat_clear_snapshot()")
        n, backends = admin.execute(
            "select xact_commit, numbackends from pg_stat_database where datname = %s", (dbname,)
        ).fetchone()
        if backends == 0 and n == last:
            return int(n)
        last = n
        assert time.monotonic() < deadline, "the test database kept connections open"
        time.sleep(0.3)


@pytest.fixture
def counted_app(dsn: str) -> Generator[pgdurable.App, None, None]:
    app = pgdurable.App(dsn, lease=30.0)
    app.check_schema()
    # One connection, so every statement of a run is seen on the counting connection.
    app._pool = ConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True},
        connection_class=CountingConnection,
        open=True,
    )
    yield app
    app.close()


def _define(app: pgdurable.App) -> tuple[Any, Any]:
    @app.step()
    def noop() -> None:
        return None

    @app.transaction()
    def insert_row(conn: psycopg.Connection[Any], i: int) -> None:
        conn.execute("insert into rt_rows (i) values (%s)", (i,))

    @app.workflow()
    def steps(n: int) -> int:
        for _ in range(n):
            noop()
        return n

    @app.workflow()
    def tx_steps(n: int) -> int:
        for i in range(n):
            insert_row(i)
        return n

    return steps, tx_steps


def _round_trips(wf: Any, n: int) -> int:
    before = CountingConnection.round_trips
    assert wf(n) == n
    return CountingConnection.round_trips - before


def test_one_round_trip_per_noop_step_and_transaction_step_adds_only_its_own(
    counted_app: pgdurable.App,
) -> None:
    with counted_app.connect() as c:
        c.execute("create table rt_rows (i integer not null)")
    steps, tx_steps = _define(counted_app)
    _round_trips(steps, 3)  # prepare the statements on the pooled connection
    _round_trips(tx_steps, 3)
    base = _round_trips(steps, 0)
    assert _round_trips(steps, 50) - base == 50
    # A transaction step: BEGIN, the user's INSERT, then the checkpoint and the COMMIT in one
    # pipeline: three round trips, one fewer than the user's own transaction of one INSERT.
    assert _round_trips(tx_steps, 50) - base == 50 * 3


def test_one_commit_per_noop_step_and_no_extra_commit_for_a_transaction_step(
    server_dsn: str, dsn: str
) -> None:
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table rt_rows (i integer not null)")
    with psycopg.connect(server_dsn, autocommit=True) as admin:

        def commits_of(workflow: str, n: int) -> int:
            before = _commits(admin, dbname)
            app = pgdurable.App(dsn, lease=30.0)
            steps, tx_steps = _define(app)
            assert {"steps": steps, "tx_steps": tx_steps}[workflow](n) == n
            app.close()
            return _commits(admin, dbname) - before

        # Each workflow call has a constant cost (connect, start, claim, complete); running
        # one step in the base call too cancels one-off costs, leaving the per-step commits.
        assert commits_of("steps", 51) - commits_of("steps", 1) == 50
        assert commits_of("tx_steps", 51) - commits_of("tx_steps", 1) == 50
        with psycopg.connect(dsn) as c:
            assert c.execute("select count(*) from rt_rows").fetchone()[0] == 52
