"""Retention on by default: finished runs are deleted 30 days after they finish (per workflow and
per queue rules override it), by the workers, in batches, one worker at a time; runs a live run
may still read, and unfinished runs, are never deleted. Engine time is shifted, not waited."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

import pgdurable
from apps.support import query, running_worker, scalar, shift_clock, wait_until
from pgdurable import _housekeeping, _worker


def runs_of(dsn: str) -> dict[str, str]:
    return dict(query(dsn, "select workflow_id, status from pgdurable.runs"))


def purge(dsn: str, limit: int = 1000) -> int:
    return int(scalar(dsn, "select pgdurable.purge_expired(%s)", (limit,)))


def test_finished_runs_go_after_their_retention_and_live_ones_stay(app: pgdurable.App) -> None:
    @app.workflow(name="ret.job")
    def job() -> str:
        return "ok"

    @app.workflow(name="ret.keep")
    def keep() -> str:
        return "kept"

    @app.workflow(name="ret.parent")
    def parent() -> str:
        job.options(workflow_id="child-of-waiting").start()
        return str(pgdurable.wait_for_event("never"))

    @app.workflow(name="ret.quick", queue="scratch")
    def quick() -> str:
        return "quick"

    app.retention(None, workflow=keep)  # forever
    app.retention(timedelta(days=1), queue="scratch")
    for i in range(3):
        job.options(workflow_id=f"old-{i}").start()
    keep.options(workflow_id="kept").start()
    quick.options(workflow_id="scratch-1").start()
    parent.options(workflow_id="waiting-parent").start()
    with running_worker(app, queues=["default", "scratch"], poll_interval=0.05):
        wait_until(
            "the runs to settle",
            lambda: (
                scalar(
                    app.dsn,
                    "select count(*) from pgdurable.runs where status in ('completed', 'waiting')",
                )
                == 7
            ),
        )
    job.options(workflow_id="unfinished").start()

    shift_clock(app.dsn, "2 days")
    assert purge(app.dsn) == 1, "the scratch queue keeps a day"
    assert "scratch-1" not in runs_of(app.dsn)
    shift_clock(app.dsn, "29 days")
    assert purge(app.dsn, limit=2) == 2, "in batches"
    assert purge(app.dsn) == 1
    assert purge(app.dsn) == 0
    assert runs_of(app.dsn) == {
        "kept": "completed",  # its workflow keeps forever
        "child-of-waiting": "completed",  # its parent is unfinished and may still read it
        "waiting-parent": "waiting",
        "unfinished": "pending",
    }
    assert scalar(app.dsn, "select count(*) from pgdurable.checkpoints") == 1, "the child start"


def test_retention_can_be_switched_off_and_bad_rules_are_refused(app: pgdurable.App) -> None:
    @app.workflow(name="ret.any")
    def anything() -> None:
        return None

    anything.start()
    with running_worker(app, poll_interval=0.05):
        wait_until(
            "the run", lambda: scalar(app.dsn, "select status from pgdurable.runs") == "completed"
        )
    with app.connect() as conn:
        conn.execute("select pgdurable.set_retention('default', null, null)")
        for sql in (
            "select pgdurable.set_retention('default', null, '-1 day')",
            "select pgdurable.set_retention('workflow', null, '1 day')",
            "select pgdurable.set_retention('table', 'runs', '1 day')",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert info.value.sqlstate == "PD004", sql
    shift_clock(app.dsn, "3650 days")
    assert purge(app.dsn) == 0, "null: kept forever"
    with pytest.raises(ValueError, match="not both"):
        app.retention(timedelta(days=1), workflow="x", queue="y")
    with pytest.raises(ValueError, match="retention keep"):
        app.retention(timedelta(days=-1))


def test_one_worker_purges_at_a_time(app: pgdurable.App) -> None:
    with app.connect() as first, app.connect() as second:
        first.autocommit = second.autocommit = False
        assert first.execute("select pgdurable.purge_expired(10)").fetchone() == (0,)
        # the first still holds the purge lock in its transaction: the second returns at once
        assert second.execute("select pgdurable.purge_expired(10)").fetchone() == (0,)
        held = second.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and granted "
            "and database = (select oid from pg_database where datname = current_database())"
        ).fetchone()
        assert held == (1,)
        first.rollback()
        second.rollback()


def test_workers_purge_expired_runs_on_their_own(
    app: pgdurable.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_worker, "PURGE_EVERY", 0.1)  # the first round
    monkeypatch.setattr(_housekeeping, "PURGE_EVERY", 0.1)  # the ones after it

    @app.workflow(name="ret.auto")
    def auto() -> int:
        return 1

    app.retention(timedelta(hours=1))
    handles = [auto.start() for _ in range(5)]
    with running_worker(app, poll_interval=0.05):
        assert [h.result(timeout=10) for h in handles] == [1] * 5
        assert scalar(app.dsn, "select retention from pgdurable.settings") == timedelta(hours=1)
        shift_clock(app.dsn, "2 hours")
        wait_until(
            "the worker to purge",
            lambda: scalar(app.dsn, "select count(*) from pgdurable.runs") == 0,
        )


def test_retention_takes_seconds_and_a_schedule_name_once(app: pgdurable.App) -> None:
    app.retention(3600)
    assert app.retention_rules[("default", "")] == timedelta(hours=1)

    @app.workflow(name="ret.nightly", schedule="0 3 * * *")
    def nightly() -> None:
        return None

    with pytest.raises(ValueError, match=r"a schedule named 'ret\.nightly' is already declared"):
        app.schedule(nightly, cron="0 4 * * *")
    assert app.schedule(nightly, cron="0 4 * * *", name="ret.early").name == "ret.early"
