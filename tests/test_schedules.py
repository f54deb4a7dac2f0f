"""Schedules: one run per tick across workers, catch-up and overlap policies, daylight-saving
days, pause / resume / run now, and bad declarations refused. Engine time is moved with
pgdurable.shift_clock(), never slept through."""

from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner

import pgdurable
from apps.flavours import FlavouredApp
from apps.support import query, running_worker, scalar, wait_until
from pgdurable._schedules import Firing, firing, next_tick
from pgdurable_cli.main import cli

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")

# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


def engine_now(dsn: str) -> datetime:
    value: datetime = scalar(dsn, "select pgdurable.now()")
    return value


def set_engine_time(dsn: str, when: datetime) -> None:
    query(dsn, "select pgdurable.shift_clock(%s - pgdurable.now())", (when,))


def schedule_row(dsn: str, name: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("select * from pgdurable.schedules where name = %s", (name,))
        row = cur.fetchone()
        assert row is not None, name
        return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def scheduled_ids(dsn: str, name: str) -> list[str]:
    return [
        r[0]
        for r in query(
            dsn,
            "select workflow_id from pgdurable.runs where workflow_id like %s order by 1",
            (f"schedule:{name}:%",),
        )
    ]


def armed(dsn: str, name: str) -> datetime:
    """Wait until a worker has computed the schedule's first tick; return it."""
    when: datetime = wait_until(
        f"schedule {name} to be armed",
        lambda: scalar(
            dsn, "select next_fire_at from pgdurable.schedules where name = %s", (name,)
        ),
    )
    return when


# --- cron and the calendar (pure) --------------------------------------------------------------


def test_a_time_skipped_by_spring_forward_fires_once_right_after_the_gap() -> None:
    ticks, at = [], datetime(2026, 3, 28, 12, tzinfo=BERLIN)
    for _ in range(3):
        at = next_tick("30 2 * * *", "Europe/Berlin", at)
        ticks.append(at.astimezone(BERLIN).isoformat())
    assert ticks == [
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_time_repeated_by_fall_back_fires_once_and_hourly_jobs_fire_in_both_hours() -> None:
    catchup = firing(
        "30 2 * * *",
        "Europe/Berlin",
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 27, 0, 0, tzinfo=UTC),
        "all",
        10,
    )
    assert [t.astimezone(BERLIN).isoformat() for t in catchup.ticks] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # once, though 02:30 happens twice
        "2026-10-26T02:30:00+01:00",
    ]
    at, hours = datetime(2026, 10, 24, 23, 0, tzinfo=UTC), []
    for _ in range(3):
        at = next_tick("0 * * * *", "Europe/Berlin", at)
        hours.append(at.astimezone(BERLIN).isoformat())
    assert hours == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_catchup_policies_after_downtime() -> None:
    due, now = datetime(2026, 1, 1, 11, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    every5 = "*/5 * * * *"
    after = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    on_time = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert firing(every5, "UTC", due, now, "all", 5) == Firing(
        [datetime(2026, 1, 1, 11, m, tzinfo=UTC) for m in (40, 45, 50, 55)] + [on_time], after, 8
    )
    assert firing(every5, "UTC", due, now, "latest", 100) == Firing([on_time], after, 12)
    # skip: the newest tick is 30 s late, within the grace minute; the 12 before it are skipped
    assert firing(every5, "UTC", due, now, "skip", 100) == Firing([on_time], after, 12)
    late = now + timedelta(minutes=2)
    assert firing(every5, "UTC", due, late, "skip", 100) == Firing([], after, 13)
    assert firing(every5, "UTC", None, now, "all", 5) == Firing([], after, 0), "new: next tick"


def test_bad_declarations_are_refused_and_register_nothing(app: pgdurable.App) -> None:
    @app.workflow(name="sch.target")
    def target() -> None:
        return None

    for kwargs, message in (
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "* * *"}, "invalid cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "catchup": "some"}, "catchup must be one of skip, latest, all"),
        ({"cron": "* * * * *", "overlap": "never"}, "overlap must be one of allow, skip, queue"),
        ({"cron": "* * * * *", "catchup_max": 0}, "catchup_max must be an int from 1"),
        ({"cron": "* * * * *", "args": [object()]}, "not JSON"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            app.schedule(target, **kwargs)

    def bad() -> None:
        return None

    with pytest.raises(ValueError, match="invalid cron expression"):
        app.workflow(name="sch.bad", schedule="every day")(bad)
    assert app.schedules == {} and "sch.bad" not in app.workflows
    with app.connect() as conn:
        for sql in (
            "select pgdurable.upsert_schedule('s', 'sch.target', 'hourly')",
            "select pgdurable.upsert_schedule('s', 'sch.target', '* * * * *', 'Nowhere/Town')",
            "select pgdurable.upsert_schedule('s', 'sch.target', '* * * * *', 'UTC', '[]')",
            "select pgdurable.upsert_schedule('s', 'sch.target', '* * * * *', 'UTC', "
            "'{}', '{\"overlap\": \"sometimes\"}')",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert info.value.sqlstate in ("PD003", "PD004"), sql
    assert scalar(app.dsn, "select count(*) from pgdurable.schedules") == 0


# --- firing ------------------------------------------------------------------------------------


def test_each_tick_starts_exactly_one_run_across_three_workers(app: pgdurable.App) -> None:
    apps = [app, *(FlavouredApp(app.dsn, lease=2.0, flavour=app.flavour) for _ in range(2))]  # type: ignore[attr-defined]
    for a in apps:

        @a.workflow(name="sch.minutely")
        def minutely() -> str:
            return "tick"

        a.schedule(minutely, cron="* * * * *", catchup="all", catchup_max=50)
    with ExitStack() as stack:
        for a in apps:
            stack.enter_context(running_worker(a, poll_interval=0.05))
        first = armed(app.dsn, "sch.minutely")
        query(app.dsn, "select pgdurable.shift_clock('10 minutes')")
        wait_until(
            "ten runs",
            lambda: (
                scalar(app.dsn, "select count(*) from pgdurable.runs where status = 'completed'")
                == 10
            ),
        )
        time.sleep(1.5)  # more firing rounds of three workers, which must start nothing more
    expected = [
        f"schedule:sch.minutely:{(first + timedelta(minutes=m)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        for m in range(10)
    ]
    assert scheduled_ids(app.dsn, "sch.minutely") == expected
    assert scalar(app.dsn, "select count(*) from pgdurable.runs") == 10
    row = schedule_row(app.dsn, "sch.minutely")
    assert row["next_fire_at"] == first + timedelta(minutes=10)
    assert row["last_fire_at"] == first + timedelta(minutes=9)
    for a in apps[1:]:
        a.close()


def test_latest_catchup_starts_one_run_for_a_missed_day(app: pgdurable.App) -> None:
    @app.workflow(name="sch.hourly", schedule="0 * * * *")
    def hourly() -> str:
        return "report"

    with running_worker(app, poll_interval=0.05):
        first = armed(app.dsn, "sch.hourly")
        query(app.dsn, "select pgdurable.shift_clock('1 day')")
        wait_until(
            "the catch-up run",
            lambda: (
                schedule_row(app.dsn, "sch.hourly")["next_fire_at"]
                > first + timedelta(days=1) - timedelta(hours=1)
            ),
        )
    ids = scheduled_ids(app.dsn, "sch.hourly")
    assert len(ids) == 1, ids
    assert (
        ids[0]
        == f"schedule:sch.hourly:{(first + timedelta(hours=23)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )


def test_overlap_skip_starts_nothing_while_the_last_run_goes(app: pgdurable.App) -> None:
    @app.workflow(name="sch.long")
    def long() -> str:
        pgdurable.sleep(timedelta(hours=1))
        return "done"

    app.schedule(long, cron="*/10 * * * *", overlap="skip", catchup="all")
    with running_worker(app, poll_interval=0.05):
        first = armed(app.dsn, "sch.long")
        set_engine_time(app.dsn, first)
        wait_until(
            "the first run to sleep",
            lambda: (
                scalar(app.dsn, "select count(*) from pgdurable.runs where status = 'sleeping'")
                == 1
            ),
        )
        query(app.dsn, "select pgdurable.shift_clock('30 minutes')")  # 3 ticks while it sleeps
        wait_until(
            "the ticks to pass",
            lambda: (
                schedule_row(app.dsn, "sch.long")["next_fire_at"] > first + timedelta(minutes=30)
            ),
        )
    assert len(scheduled_ids(app.dsn, "sch.long")) == 1
    assert schedule_row(app.dsn, "sch.long")["last_fire_at"] == first + timedelta(minutes=30)


def test_pause_resume_and_run_now(app: pgdurable.App) -> None:
    @app.workflow(name="sch.nightly", schedule="0 3 * * *", tz="Europe/Berlin")
    def nightly() -> str:
        return "ran"

    def run(*args: str) -> Any:
        return CliRunner().invoke(
            cli, ["schedules", *args, "--dsn", app.dsn], catch_exceptions=False
        )

    with running_worker(app, poll_interval=0.05):
        armed(app.dsn, "sch.nightly")
        assert run("pause", "sch.nightly").output == "schedule sch.nightly: paused\n"
        query(app.dsn, "select pgdurable.shift_clock('3 days')")
        triggered = run("trigger", "sch.nightly")
        assert triggered.exit_code == 0 and "started run" in triggered.output
        wait_until(
            "the triggered run",
            lambda: (
                scalar(app.dsn, "select count(*) from pgdurable.runs where status = 'completed'")
                == 1
            ),
        )
        assert run("resume", "sch.nightly").exit_code == 0
        after = armed(app.dsn, "sch.nightly")
        assert after > engine_now(app.dsn), "ticks missed while paused are not caught up"
        assert after.astimezone(BERLIN).hour == 3
        listing = run()
        assert "sch.nightly" in listing.output and "Europe/Berlin" in listing.output
    ids = scheduled_ids(app.dsn, "sch.nightly")
    assert len(ids) == 1 and ids[0].startswith("schedule:sch.nightly:now:")
    assert run("delete", "sch.nightly").output == "schedule sch.nightly: deleted (its runs stay)\n"
    missing = CliRunner().invoke(cli, ["schedules", "trigger", "nope", "--dsn", app.dsn])
    assert missing.exit_code == 1 and "no schedule named 'nope'" in missing.output


def test_a_daily_schedule_across_both_daylight_saving_days(app: pgdurable.App) -> None:
    @app.workflow(name="sch.berlin")
    def berlin() -> str:
        return "ok"

    app.schedule(berlin, cron="30 2 * * *", tz="Europe/Berlin", catchup="all")
    for start, days, expected in (
        (
            datetime(2026, 3, 28, 12, tzinfo=BERLIN),
            2,
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        ),
        (
            datetime(2026, 10, 24, 12, tzinfo=BERLIN),
            2,
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        ),
    ):
        query(app.dsn, "delete from pgdurable.schedules")
        set_engine_time(app.dsn, start)
        with running_worker(app, poll_interval=0.05):
            armed(app.dsn, "sch.berlin")
            query(app.dsn, "select pgdurable.shift_clock(%s)", (timedelta(days=days),))
            wait_until(
                "both nights",
                lambda expected=expected: (
                    len([i for i in scheduled_ids(app.dsn, "sch.berlin") if i[-20:] in expected])
                    == 2
                ),
            )
        assert [i[-20:] for i in scheduled_ids(app.dsn, "sch.berlin")][-2:] == expected
