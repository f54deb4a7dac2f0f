"""The pytest plugin pgdurable ships (pgdurable.testing): a user's test files, run by pytester in
a pytest of their own, use its fixtures against a real PostgreSQL.

The documented example (docs/testing.md) runs with a week-long sleep under a 30 s timeout.
"""

from __future__ import annotations

from datetime import timedelta
from importlib.metadata import entry_points

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgdurable
from conftest import ROOT
from pgdurable.testing import DurableClock, DurableWorker

pytest_plugins = ["pytester"]

# Kept word for word in docs/testing.md (checked below).
EXAMPLE = '''\
"""An order ships a week after it is placed, once approved, though the carrier's API is flaky."""

from datetime import timedelta

import pytest

import pgdurable
from pgdurable.testing import use

app = pgdurable.App()  # your project's App: each test points it at a database of its own

carrier_calls = []


@app.step(retry=pgdurable.Retry(max_attempts=3, initial_delay=timedelta(minutes=10), jitter=False))
def book_carrier(order_id: str) -> str:
    carrier_calls.append(order_id)
    if len(carrier_calls) < 3:
        raise ConnectionError("carrier API unavailable")
    return f"parcel-{order_id}"


@app.workflow()
def ship_order(order_id: str) -> dict:
    pgdurable.sleep(timedelta(weeks=1))  # the week a customer has to change their mind
    approval = pgdurable.wait_for_event(f"approved:{order_id}", timeout=timedelta(days=2))
    return {"parcel": book_carrier(order_id), "approved_by": approval["by"]}


@pytest.fixture
def durable_app(durable_dsn):
    with use(app, durable_dsn):
        yield app


def test_an_order_ships_a_week_after_approval(durable_app, durable_worker, durable_clock):
    placed = durable_clock.now()
    handle = ship_order.start("o-1")

    durable_clock.advance(weeks=1)  # the run reaches its sleep, then a week passes
    durable_worker.drain()
    assert handle.status() == "waiting"  # for the approval

    durable_app.emit_event("approved:o-1", {"by": "ann"})
    durable_worker.drain()
    assert carrier_calls == ["o-1"]  # the carrier failed; the retry is due in 10 minutes
    durable_clock.advance(minutes=10)  # it fails again; the next retry is 20 minutes later
    durable_worker.drain()
    durable_clock.advance(minutes=20)

    assert handle.result(timeout=10) == {"parcel": "parcel-o-1", "approved_by": "ann"}
    assert carrier_calls == ["o-1", "o-1", "o-1"]
    assert durable_clock.now() - placed >= timedelta(weeks=1, minutes=30)
'''

# Strict like a careful project: warnings are errors, markers declared, a timeout on each test
# far below a week, and far below the wall time any real sleep in the example would take.
STRICT_INI = """\
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
timeout = 30
"""

# Each test of this module checks one promise of the fixtures; the outer test reads the outcomes.
BEHAVIOUR = """\
import os
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgdurable
from pgdurable.testing import use

app = pgdurable.App()
gate = threading.Event()


@app.workflow()
def nap(days: int) -> str:
    pgdurable.sleep(timedelta(days=days))
    return "rested"


@app.step()
def wait_at_gate() -> str:
    assert gate.wait(20), "the test never opened the gate"
    return "through"


@app.workflow()
def gated() -> str:
    return wait_at_gate()


@pytest.fixture
def durable_app(durable_dsn):
    with use(app, durable_dsn):
        yield app


def test_a_moves_its_clock_and_records_its_databases(durable_app, durable_dsn, durable_template,
                                                      durable_clock):
    with open("databases.txt", "w") as f:
        f.write(conninfo_to_dict(durable_dsn)["dbname"] + "\\n" + durable_template + "\\n")
    assert os.environ["PGDURABLE_DSN"] == durable_dsn
    assert pgdurable.App().dsn == durable_dsn
    nap.options(workflow_id="same-id").start(1)
    durable_clock.advance(days=3)


def test_b_gets_a_fresh_database_and_clock(durable_app, durable_dsn, durable_clock):
    with psycopg.connect(durable_dsn) as conn:
        assert conn.execute("select count(*) from pgdurable.runs").fetchone()[0] == 0
    assert abs(durable_clock.now() - datetime.now(timezone.utc)) < timedelta(hours=1)
    nap.options(workflow_id="same-id").start(1)


def test_c_advance_without_a_running_worker_fires_due_timers(durable_app, durable_worker,
                                                             durable_clock):
    handle = nap.start(2)
    durable_worker.drain()
    assert handle.status() == "sleeping"
    durable_worker.stop()
    durable_clock.advance(days=1)
    assert handle.status() == "sleeping"
    durable_clock.advance(days=1)
    assert handle.status() == "pending"
    durable_worker.start(concurrency=1)
    assert handle.result(timeout=10) == "rested"


def test_d_advance_refuses_to_go_back_or_stand_still(durable_clock):
    with pytest.raises(ValueError, match="forward only"):
        durable_clock.advance()
    with pytest.raises(ValueError, match="forward only"):
        durable_clock.advance(timedelta(days=-1))


def test_e_drain_names_the_run_it_still_waits_for(durable_app, durable_worker):
    gate.clear()
    handle = gated.options(workflow_id="at-the-gate").start()
    with pytest.raises(TimeoutError, match="gated 'at-the-gate' \\\\(running"):
        durable_worker.drain(timeout=0.5)
    gate.set()
    durable_worker.drain()
    assert handle.status() == "completed"
"""


def _databases(server_dsn: str, names: list[str]) -> list[str]:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname = any(%s)", (names,)
        ).fetchall()
    return [r[0] for r in rows]


def test_the_plugin_is_registered_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    found = [e.value for e in entry_points(group="pytest11") if e.name == "pgdurable"]
    assert found == ["pgdurable.testing"], "not registered: reinstall, pip install -e ."
    assert request.config.pluginmanager.has_plugin("pgdurable")


def test_its_fixtures_live_beside_the_projects_own(
    dsn: str, durable_dsn: str, app: object, durable_app: object
) -> None:
    names = {conninfo_to_dict(d)["dbname"] for d in (dsn, durable_dsn)}
    assert len(names) == 2, "the project's and the kit's fixtures share a database"
    assert app is not durable_app
    for d in (dsn, durable_dsn):
        with psycopg.connect(d) as conn:
            assert conn.execute("select count(*) from pgdurable.runs").fetchone() == (0,)


@pytest.mark.slow
def test_the_documented_example_sleeps_a_week_under_a_30_second_timeout(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    assert f"```python\n{EXAMPLE}```" in doc, "docs/testing.md and EXAMPLE differ"
    monkeypatch.setenv("PGDURABLE_TEST_DSN", server_dsn)
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_orders=EXAMPLE)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_an_order_ships_a_week_after_approval PASSED*"])


@pytest.mark.slow
def test_each_test_gets_a_fresh_database_and_clock_all_dropped_afterwards(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGDURABLE_TEST_DSN", server_dsn)
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_behaviour=BEHAVIOUR)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=5)
    created = (pytester.path / "databases.txt").read_text().split()
    assert len(created) == 2 and all(n.startswith("pgdurable_test_") for n in created)
    assert _databases(server_dsn, created) == [], "a test database was left behind"


@pytest.mark.slow
def test_the_ini_option_points_the_projects_app_at_each_tests_database(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGDURABLE_TEST_DSN", server_dsn)
    pytester.makeini(STRICT_INI + "pgdurable_app = myflows:app\n")
    pytester.makepyfile(
        myflows="""\
        import pgdurable

        app = pgdurable.App("postgresql://nobody@production.invalid/orders")


        @app.workflow()
        def greet(name: str) -> str:
            return f"hello {name}"
        """,
        test_flows="""\
        import myflows


        def test_uses_the_projects_app(durable_app, durable_worker, durable_dsn):
            assert durable_app is myflows.app
            assert myflows.app.dsn == durable_dsn
            assert myflows.greet.start("ann").result(timeout=10) == "hello ann"


        def test_gives_it_back_its_own_database_afterwards():
            assert myflows.app.dsn == "postgresql://nobody@production.invalid/orders"
        """,
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


@pytest.mark.slow
def test_an_unreachable_server_is_an_error_never_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGDURABLE_TEST_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_db="def test_needs_a_database(durable_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot reach the test PostgreSQL*PGDURABLE_TEST_DSN*"])


def test_the_durable_worker_and_clock_run_async_workflows(app: pgdurable.App) -> None:
    """The kit's worker is an App worker: async workflows run on its async lane, and a week's
    durable sleep passes with durable_clock.advance()."""

    @app.workflow(name="kit.async_week")
    async def week() -> str:
        await pgdurable.sleep_async(timedelta(days=7))
        return "a week later"

    worker = DurableWorker(app).start()
    try:
        handle = week.start()
        DurableClock(app.dsn, [worker]).advance(days=7)
        worker.drain()
        assert handle.result(timeout=10) == "a week later"
    finally:
        worker.stop()
