"""The core engine's semantics against a real PostgreSQL: idempotent starts, leases and fencing,
retries, durable sleep, rolling deploys, non-determinism, connection loss, transactional starts
and input validation. Engine time is shifted with pgdurable.shift_clock(), never slept through.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgdurable
from apps.flavours import FlavouredApp
from apps.support import (
    listeners,
    query,
    run_status,
    running_worker,
    scalar,
    shift_clock,
    wait_status,
    wait_until,
)
from conftest import with_db
from pgdurable import Retry
from pgdurable._app import call_sql

BOTH_FLAVOURS = True


def run_count(dsn: str) -> int:
    return int(scalar(dsn, "select count(*) from pgdurable.runs"))


def terminate_backends(dsn: str) -> int:
    """Kill every other session of the database, as a restart or failover would, and wait
    until they are gone (the next call comes after the drop, not during it)."""
    return int(
        scalar(
            dsn,
            "select count(pg_terminate_backend(pid, 5000)) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()",
        )
    )


def checkpoint_rows(dsn: str, run_id: Any) -> list[tuple[Any, ...]]:
    """(step_key, kind, attempts, has error) of a run's checkpoints, in order."""
    return query(
        dsn,
        "select step_key, kind, attempts, error is not null from pgdurable.checkpoints "
        "where run_id = %s order by seq",
        (run_id,),
    )


def claim(
    conn: psycopg.Connection[Any],
    worker: str,
    limit: int = 10,
    lease: float = 2.0,
    queue: str = "default",
) -> list[tuple[Any, int]]:
    """(run id, attempt) of the runs ``worker`` claims."""
    rows = call_sql(conn, "claim_runs", (worker, [queue], limit, lease, None)).fetchall()
    return [(r[0], r[5]) for r in rows]


# --- idempotent start --------------------------------------------------------------------------


def test_start_is_idempotent_on_workflow_id(app: pgdurable.App) -> None:
    @app.workflow(name="idem.a")
    def a(x: int) -> int:
        return x

    @app.workflow(name="idem.b")
    def b(x: int) -> int:
        return x

    first = a.options(workflow_id="order-1").start(1)
    again = a.options(workflow_id="order-1").start(2)
    assert again.run_id == first.run_id
    assert app.handle("order-1").run_id == first.run_id
    with pytest.raises(pgdurable.WorkflowIdConflict, match="order-1"):
        a.options(workflow_id="order-1", on_conflict="raise").start(3)
    with pytest.raises(pgdurable.WorkflowIdConflict, match=r"idem\.a"):
        b.options(workflow_id="order-1").start(4)
    assert query(app.dsn, "select workflow_name, input from pgdurable.runs") == [
        ("idem.a", {"args": [1], "kwargs": {}})
    ]


# --- leases and fencing ------------------------------------------------------------------------


def test_expired_lease_is_taken_over_and_the_zombie_cannot_write(app: pgdurable.App) -> None:
    handle = app.start("fence.any", [1], allow_unregistered=True)
    with app.connect() as c:
        assert claim(c, "zombie") == [(handle.run_id, 1)]
        assert claim(c, "thief") == [], "a live lease was taken"
        shift_clock(app.dsn, "3 seconds")
        assert claim(c, "thief") == [(handle.run_id, 2)]

        error = Jsonb({"type": "X", "message": "m", "traceback": None})
        zombie_writes = {
            "record_checkpoint": (handle.run_id, 1, 0, "s", "step", "s", Jsonb(1), None, 1, None),
            "complete_run": (handle.run_id, 1, Jsonb("zombie")),
            "fail_run": (handle.run_id, 1, error),
        }
        for name, params in zombie_writes.items():
            with pytest.raises(pgdurable.LeaseLost, match="lease lost") as info:
                call_sql(c, name, params)
            assert isinstance(info.value.__cause__, psycopg.Error)
            assert info.value.__cause__.sqlstate == "PD002", name
        with pytest.raises(psycopg.Error) as raw:
            c.execute("select pgdurable.complete_run(%s, 1, '1')", (handle.run_id,))
        assert raw.value.sqlstate == "PD002"

        call_sql(c, "complete_run", (handle.run_id, 2, Jsonb("thief")))
    assert handle.result(timeout=5) == "thief"
    assert checkpoint_rows(app.dsn, handle.run_id) == []


def test_zombie_transaction_step_rolls_back_and_the_new_owner_writes_once(
    app: pgdurable.App,
) -> None:
    dsn = app.dsn
    query(dsn, "create table orders (attempt integer not null)")
    stolen: list[tuple[Any, ...]] = []

    @app.transaction()
    def write(conn: psycopg.Connection[Any]) -> int:
        run = pgdurable.current_run()
        assert run is not None
        conn.execute("insert into orders values (%s)", (run.attempt,))
        if not stolen:
            # While this attempt is inside its transaction, another worker takes the run over.
            # Its lease (20 s) outlives any slowness of a loaded host: only the shift below
            # ends it (a 2 s lease could lapse first, and the worker's next attempt, 3, was then
            # itself expired by that shift).
            shift_clock(dsn, "1 minute")
            stolen.extend(
                query(
                    dsn,
                    "select attempt from pgdurable.claim_runs('thief', array['default'], 1, 20)",
                )
            )
        return run.attempt

    @app.workflow(name="fence.tx")
    def flow() -> int:
        return write()

    handle = flow.start()
    with running_worker(app, concurrency=1):
        wait_until("the takeover", lambda: stolen)
        assert stolen == [(2,)]
        wait_until(
            "the zombie to give up",
            lambda: (
                scalar(
                    dsn,
                    "select count(*) from pg_stat_activity where datname = current_database() "
                    "and state like 'idle in transaction%%'",
                )
                == 0
            ),
        )
        assert scalar(dsn, "select count(*) from orders") == 0
        shift_clock(dsn, "1 minute")  # the thief died too: the worker takes attempt 3
        assert handle.result(timeout=15) == 3
    assert query(dsn, "select attempt from orders") == [(3,)]
    assert checkpoint_rows(dsn, handle.run_id) == [("write", "transaction", 1, False)]


def test_worker_heartbeats_keep_a_long_step_from_being_taken_over(dsn: str, flavour: str) -> None:
    thefts: list[Any] = []

    with FlavouredApp(dsn, flavour=flavour, lease=0.3) as app:

        @app.step()
        def slow() -> str:
            # Three lease lengths of real time: only heartbeats keep the run this worker's.
            deadline = time.monotonic() + 0.9
            while time.monotonic() < deadline:
                thefts.extend(
                    query(
                        dsn, "select id from pgdurable.claim_runs('thief', array['default'], 1, 5)"
                    )
                )
                time.sleep(0.05)
            return "mine"

        @app.workflow(name="hb.slow")
        def flow() -> str:
            return slow()

        handle = flow.start()
        with running_worker(app, concurrency=1):
            assert handle.result(timeout=10) == "mine"
    assert thefts == []
    assert query(dsn, "select attempt, recoveries from pgdurable.runs") == [(1, 0)]


def test_heartbeat_extends_all_leases_of_a_worker_in_one_statement(
    conn: psycopg.Connection[Any],
) -> None:
    queue = f"hb-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        conn.execute(
            "select pgdurable.start_run('hb.flow', %s, %s)",
            (Jsonb({"args": [i]}), Jsonb({"queue": queue})),
        )
    ((long_run, _),) = claim(conn, "w1", limit=1, lease=60, queue=queue)
    ((short_run, _),) = claim(conn, "w1", limit=1, lease=5, queue=queue)
    conn.execute("select pgdurable.shift_clock('10 seconds')")
    # w2 takes over the run whose lease expired (and the last pending one)
    assert short_run in {r for r, _ in claim(conn, "w2", limit=5, lease=30, queue=queue)}

    beat = "select run_id, lost, cancel_requested from pgdurable.heartbeat(%s, %s, %s, %s)"
    rows = conn.execute(beat, ("w1", [long_run, short_run], [1, 1], 120)).fetchall()
    assert rows == [(short_run, True, False)]
    leases = dict(
        conn.execute(
            "select id, lease_expires_at - pgdurable.now() from pgdurable.runs where id = any(%s)",
            ([long_run, short_run],),
        ).fetchall()
    )
    assert leases[long_run] == timedelta(seconds=120)
    assert leases[short_run] == timedelta(seconds=30), "the heartbeat touched a lost lease"

    assert conn.execute("select pgdurable.cancel_run(%s)", (long_run,)).fetchone() == (
        "cancelling",
    )
    rows = conn.execute(beat, ("w1", [long_run], [1], 120)).fetchall()
    assert rows == [(long_run, False, True)]


# --- retries -----------------------------------------------------------------------------------


def test_retry_delays_back_off_exponentially() -> None:
    policy = Retry(max_attempts=5, initial_delay=1, backoff=2, max_delay=5, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    jittered = Retry(initial_delay=8, backoff=2, max_delay=100)
    for n, base in ((1, 8), (2, 16), (3, 32)):
        assert all(base / 2 <= jittered.delay(n) <= base for _ in range(50))


def test_failing_step_retries_in_place_with_backoff_then_succeeds(app: pgdurable.App) -> None:
    calls: list[float] = []

    @app.step(retry=Retry(max_attempts=3, initial_delay=0.01))
    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    spaced: list[float] = []

    @app.step(retry=Retry(max_attempts=3, initial_delay=0.05, backoff=4, jitter=False))
    def spaced_out() -> str:
        spaced.append(time.monotonic())
        if len(spaced) < 3:
            raise ConnectionError("later")
        return "ok too"

    @app.workflow(name="retry.ok")
    def flow() -> list[str]:
        return [flaky(), spaced_out()]

    assert flow.options(workflow_id="r1")() == ["ok", "ok too"]
    assert len(calls) == 3
    gaps = [b - a for a, b in itertools.pairwise(spaced)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.2, gaps
    run_id = app.handle("r1").run_id
    assert checkpoint_rows(app.dsn, run_id) == [
        ("flaky", "step", 3, False),
        ("spaced_out", "step", 3, False),
    ]


def test_non_retryable_error_fails_at_once_and_exhausted_retries_fail_the_run(
    app: pgdurable.App,
) -> None:
    declined: list[int] = []
    broken: list[int] = []

    @app.step(retry=Retry(max_attempts=5, initial_delay=0.01))
    def charge() -> None:
        declined.append(1)
        raise pgdurable.NonRetryableError("card declined")

    @app.step(retry=Retry(max_attempts=3, initial_delay=0.01))
    def parse() -> None:
        broken.append(1)
        raise ValueError("bad value 42")

    @app.workflow(name="retry.charge")
    def pay() -> None:
        charge()

    @app.workflow(name="retry.parse")
    def load() -> None:
        parse()

    h_pay, h_load = pay.start(), load.start()
    with running_worker(app):
        with pytest.raises(pgdurable.WorkflowFailed) as paid:
            h_pay.result(timeout=10)
        with pytest.raises(pgdurable.WorkflowFailed) as loaded:
            h_load.result(timeout=10)

    assert len(declined) == 1
    assert paid.value.error_type.endswith("NonRetryableError")
    assert checkpoint_rows(app.dsn, h_pay.run_id) == [("charge", "step", 1, True)]

    assert len(broken) == 3
    assert checkpoint_rows(app.dsn, h_load.run_id) == [("parse", "step", 3, True)]
    err = loaded.value
    assert (err.error_type, err.message) == ("ValueError", "bad value 42")
    assert err.traceback is not None
    assert "ValueError: bad value 42" in err.traceback and "in parse" in err.traceback
    assert h_load.status() == "failed"


def test_long_retry_delay_suspends_the_run_until_its_timer(app: pgdurable.App) -> None:
    calls: list[int] = []

    # an unset max_delay never caps below initial_delay
    @app.step(retry=Retry(max_attempts=3, initial_delay=3600))
    def call_upstream() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("upstream down")
        return "recovered"

    @app.workflow(name="retry.later")
    def flow() -> str:
        return call_upstream()

    handle = flow.start()
    with running_worker(app, concurrency=1):
        wait_status(app.dsn, handle.run_id, "sleeping")
        ((reason, wait),) = query(
            app.dsn,
            "select reason, fire_at - pgdurable.now() from pgdurable.timers where run_id = %s",
            (handle.run_id,),
        )
        assert reason == "retry"
        assert timedelta(minutes=29) < wait <= timedelta(hours=1)
        assert "upstream down" in scalar(app.dsn, "select note from pgdurable.runs")
        shift_clock(app.dsn, "1 hour 1 minute")
        assert handle.result(timeout=10) == "recovered"
    assert len(calls) == 2
    assert checkpoint_rows(app.dsn, handle.run_id) == [("call_upstream", "step", 2, False)]
    assert query(app.dsn, "select count(*) from pgdurable.timers") == [(0,)]


def test_run_past_its_crash_recovery_cap_is_dead_lettered(app: pgdurable.App) -> None:
    handle = app.start("dead.flow", max_recoveries=1, allow_unregistered=True)
    with app.connect() as c:
        assert claim(c, "crashing-1") == [(handle.run_id, 1)]
        shift_clock(app.dsn, "1 minute")
        assert claim(c, "crashing-2") == [(handle.run_id, 2)]  # recovery 1 of 1
        shift_clock(app.dsn, "1 minute")
        assert claim(c, "crashing-3") == []
    with pytest.raises(pgdurable.WorkflowFailed) as info:
        handle.result(timeout=5)
    assert info.value.error_type == "DeadLettered"
    assert "crashing-2" in info.value.message
    assert query(app.dsn, "select status, recoveries from pgdurable.runs") == [("failed", 2)]


# --- durable sleep -----------------------------------------------------------------------------


def test_durable_sleep_holds_no_worker_slot_and_wakes_after_the_clock_moves(
    app: pgdurable.App,
) -> None:
    done: list[str] = []

    @app.step()
    def mark(label: str) -> str:
        done.append(label)
        return label

    @app.workflow(name="sleep.days")
    def sleeper() -> str:
        mark("before")
        pgdurable.sleep(timedelta(days=3))
        return mark("after")

    @app.workflow(name="sleep.quick")
    def quick() -> str:
        return "quick"

    with running_worker(app, concurrency=1):
        handle = sleeper.start()
        wait_status(app.dsn, handle.run_id, "sleeping")
        ((reason, wait),) = query(
            app.dsn, "select reason, fire_at - pgdurable.now() from pgdurable.timers"
        )
        assert reason == "sleep" and timedelta(days=3) - timedelta(minutes=1) < wait
        assert query(
            app.dsn,
            "select worker_id, lease_expires_at from pgdurable.runs where id = %s",
            (handle.run_id,),
        ) == [(None, None)]
        assert quick.start().result(timeout=10) == "quick"  # the only slot is free
        assert run_status(app.dsn, handle.run_id) == "sleeping"
        shift_clock(app.dsn, "3 days")
        assert handle.result(timeout=10) == "after"
    assert done == ["before", "after"]
    assert [k for k, *_ in checkpoint_rows(app.dsn, handle.run_id)] == ["mark", "sleep", "mark#2"]


def test_sleep_until_wakes_at_the_given_time(app: pgdurable.App) -> None:
    @app.workflow(name="sleep.until")
    def until(at: str) -> str:
        pgdurable.sleep_until(datetime.fromisoformat(at))
        return "woke"

    target = scalar(app.dsn, "select pgdurable.now() + interval '1 day'")
    with running_worker(app, concurrency=1):
        handle = until.start(target.isoformat())
        wait_status(app.dsn, handle.run_id, "sleeping")
        assert scalar(app.dsn, "select fire_at from pgdurable.timers") == target
        shift_clock(app.dsn, "23 hours")
        assert handle.status() == "sleeping"
        shift_clock(app.dsn, "1 hour 1 second")
        assert handle.result(timeout=10) == "woke"


# --- rolling deploys and code changes ----------------------------------------------------------


def test_run_of_unknown_workflow_waits_for_a_worker_that_knows_it(dsn: str) -> None:
    """A rolling deploy: a run of a workflow only the new code has is never claimed by an old
    worker (no hand-back loop, attempt stays 0); it waits, visibly, for a worker that knows it."""
    with pgdurable.App(dsn, lease=2.0) as old, pgdurable.App(dsn, lease=2.0) as new:

        @old.workflow(name="deploy.old")
        def old_flow() -> str:
            return "old"

        @new.workflow(name="deploy.new")
        def new_flow() -> str:
            return "new code"

        with pytest.raises(pgdurable.InvalidInput, match="no worker has registered"):
            old.start("deploy.new")
        handle = old.start("deploy.new", allow_unregistered=True)
        with running_worker(old):
            old_run = old.workflows["deploy.old"].start()
            assert old_run.result(timeout=10) == "old"
        ((status, attempt, note),) = query(
            dsn, "select status, attempt, note from pgdurable.runs where id = %s", (handle.run_id,)
        )
        assert (status, attempt) == ("pending", 0)
        assert note == "no worker has registered workflow deploy.new yet"
        assert query(dsn, "select id, reason from pgdurable.unserved_runs") == [
            (handle.run_id, "no worker has registered workflow deploy.new")
        ]
        with running_worker(new):
            assert handle.result(timeout=10) == "new code"
        assert query(dsn, "select note from pgdurable.runs where id = %s", (handle.run_id,)) == [
            (None,)
        ]


def test_changed_step_at_a_position_fails_with_non_determinism_error(dsn: str) -> None:
    ran: list[str] = []

    def deploy(app: pgdurable.App, second: str) -> pgdurable.Workflow[[], None]:
        """One version of the workflow: step 'reserve', then step ``second``, then a sleep."""
        reserve = app.step(name="reserve")(lambda: ran.append("reserve"))
        other = app.step(name=second)(lambda: ran.append(second))

        @app.workflow(name="nd.flow")
        def flow() -> None:
            reserve()
            other()
            pgdurable.sleep(60)

        return flow

    with pgdurable.App(dsn, lease=2.0) as v1, pgdurable.App(dsn, lease=2.0) as v2:
        flow_v1 = deploy(v1, "charge")
        deploy(v2, "refund")
        handle = flow_v1.start()
        with running_worker(v1):
            wait_status(dsn, handle.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        with running_worker(v2), pytest.raises(pgdurable.WorkflowFailed) as info:
            handle.result(timeout=10)
    err = info.value
    assert err.error_type.endswith("NonDeterminismError")
    assert "position 1" in err.message
    assert "'refund'" in err.message and "'charge'" in err.message
    assert ran == ["reserve", "charge"], "a replayed or changed step ran"


# --- connections -------------------------------------------------------------------------------


def test_worker_survives_terminated_backends_and_writes_each_row_once(app: pgdurable.App) -> None:
    dsn = app.dsn
    query(dsn, "create table tx_rows (n integer not null, which text not null)")
    release = threading.Event()
    holding: set[int] = set()

    @app.transaction()
    def put(conn: psycopg.Connection[Any], n: int, which: str) -> None:
        conn.execute("insert into tx_rows values (%s, %s)", (n, which))

    @app.step()
    def hold(n: int) -> int:
        holding.add(n)
        release.wait(30)
        return n

    @app.workflow(name="conn.loss")
    def flow(n: int) -> int:
        put(n, "first")
        hold(n)
        put(n, "second")
        return n * 10

    handles = [flow.start(i) for i in range(4)]
    with running_worker(app, concurrency=4):
        wait_until("all four runs in flight", lambda: len(holding) == 4)
        assert terminate_backends(dsn) >= 4
        release.set()
        wait_until(
            "all runs to complete",
            lambda: (
                scalar(dsn, "select count(*) from pgdurable.runs where status = 'completed'") == 4
            ),
        )
    assert query(dsn, "select id, output from pgdurable.runs order by output") == [
        (h.run_id, i * 10) for i, h in enumerate(handles)
    ]
    assert query(dsn, "select n, which, count(*) from tx_rows group by 1, 2 order by 1, 2") == [
        (i, which, 1) for i in range(4) for which in ("first", "second")
    ]


def test_app_calls_recover_from_connections_the_server_dropped(app: pgdurable.App) -> None:
    @app.workflow(name="conn.idle")
    def flow() -> str:
        return "ok"

    handle = flow.start()
    with running_worker(app):
        assert handle.result(timeout=10) == "ok"
    # A restart, failover or idle timeout drops the pool's idle connections.
    assert terminate_backends(app.dsn)
    assert handle.status() == "completed"
    assert app.handle(handle.run_id).steps() == []
    assert flow.start().status() == "pending"


def test_a_plain_start_is_one_insert_without_option_parsing(dsn: str) -> None:
    """What the SDK sends for a start without options (the queue, a workflow_id, a recovery
    cap) takes start_run's lookup-free path: no call of the option parser, observed through
    PostgreSQL's own function statistics."""
    dbname = scalar(dsn, "select current_database()")
    query(dsn, f"alter database \"{dbname}\" set track_functions = 'all'")
    app = pgdurable.App(dsn)

    @app.workflow(name="fast.start")
    def plain(x: int) -> int:
        return x

    @app.workflow(name="fast.capped", max_recoveries=3)
    def capped(x: int) -> int:
        return x

    first = plain.start(1)
    keyed = plain.options(workflow_id="fast-1").start(2)
    again = plain.options(workflow_id="fast-1").start(3)  # idempotent: the same run
    capped.start(4)
    app.close()
    assert again.run_id == keyed.run_id != first.run_id
    assert query(dsn, "select max_recoveries from pgdurable.runs order by max_recoveries") == [
        (3,),
        (10,),
        (10,),
    ]

    def calls() -> dict[str, int]:
        rows = query(
            dsn,
            "select funcname, calls from pg_stat_user_functions where schemaname = 'pgdurable'",
        )
        return {name: n for name, n in rows}

    # statistics reach the view when the sessions that counted them end or flush
    counted = wait_until(
        "start_run's statistics", lambda: calls().get("start_run") == 4 and calls()
    )
    assert "_start_settings" not in counted, counted
    assert "_check_input" not in counted, counted
    query(dsn, f'alter database "{dbname}" reset track_functions')


def test_start_in_callers_transaction_exists_only_if_it_commits(app: pgdurable.App) -> None:
    @app.workflow(name="tx.start")
    def double(x: int) -> int:
        return x * 2

    dsn = app.dsn
    with running_worker(app, concurrency=2, poll_interval=30):
        wait_until(
            "the worker to LISTEN",
            lambda: listeners(dsn),
        )
        with psycopg.connect(dsn) as c:
            double.options(conn=c).start(1)
            c.rollback()
            assert run_count(dsn) == 0
            handle = double.options(conn=c).start(21)
            assert run_count(dsn) == 0, "visible before the caller committed"
            c.commit()
        started = time.monotonic()
        # A poll would take 30 s: only the NOTIFY sent at commit can wake the worker this soon.
        assert handle.result(timeout=5) == 42
        assert time.monotonic() - started < 5


# --- bad input ---------------------------------------------------------------------------------


def test_non_json_arguments_are_rejected_at_the_call_naming_the_path(app: pgdurable.App) -> None:
    @app.workflow(name="bad.args")
    def flow(*args: Any, **kwargs: Any) -> None:
        return None

    with pytest.raises(pgdurable.SerializationError, match=r"args\[1\]\['tags'\].*set"):
        flow.start(1, {"tags": {"a", "b"}})
    with pytest.raises(pgdurable.SerializationError, match=r"kwargs\['when'\].*object"):
        flow.start(when=object())
    with pytest.raises(pgdurable.SerializationError, match="key 1"):
        flow.start({1: "x"})
    with pytest.raises(pgdurable.SerializationError, match="nan"):
        flow.start(float("nan"))
    assert run_count(app.dsn) == 0


def test_invalid_options_and_names_are_rejected(app: pgdurable.App) -> None:
    @app.workflow(name="bad.opts")
    def flow() -> None:
        return None

    with pytest.raises(TypeError, match="bogus"):
        flow.options(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="bogus"):
        app.start("bad.opts", bogus=1)
    with pytest.raises(ValueError, match="queue"):
        flow.options(queue="has space")
    with pytest.raises(ValueError, match="queue"):
        app.workflow(name="bad.q", queue="no/slash")(flow.fn)
    with pytest.raises(ValueError, match="on_conflict"):
        flow.options(on_conflict="ignore")
    with pytest.raises(ValueError, match="delay"):
        flow.options(delay=-1)
    with pytest.raises(ValueError, match="workflow name"):
        app.workflow(name="1starts-with-digit")(flow.fn)
    assert run_count(app.dsn) == 0


@pytest.mark.parametrize(
    ("args", "sqlstate", "message"),
    [
        (("bad name!", '{"args": []}', "{}"), "PD003", "invalid workflow name"),
        (("ok", '{"args": {}}', "{}"), "PD003", "invalid input for workflow ok"),
        (("ok", '{"args": [], "extra": 1}', "{}"), "PD003", "invalid input"),
        (("ok", "[1, 2]", "{}"), "PD003", "invalid input"),
        (("ok", '{"args": []}', '{"bogus": 1}'), "PD004", "unknown start option(s): bogus"),
        (("ok", '{"args": []}', '{"queue": "a b"}'), "PD004", "invalid queue name"),
        (("ok", '{"args": []}', '{"delay": "soon"}'), "PD004", "invalid start options"),
        (("ok", '{"args": []}', '{"on_conflict": "merge"}'), "PD004", "on_conflict"),
        (("ok", '{"args": []}', "[]"), "PD004", "options must be a JSON object"),
    ],
)
def test_sql_start_run_rejects_malformed_input_with_its_sqlstate(
    conn: psycopg.Connection[Any], args: tuple[str, str, str], sqlstate: str, message: str
) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select pgdurable.start_run(%s, %s::jsonb, %s::jsonb)", args)
    assert info.value.sqlstate == sqlstate
    assert message in (info.value.diag.message_primary or "")
    conn.rollback()
    with pytest.raises(
        pgdurable.InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        call_sql(conn, "start_run", args)


def test_durable_primitives_outside_a_workflow_raise_not_in_workflow() -> None:
    for call in (
        lambda: pgdurable.sleep(1),
        pgdurable.now,
        pgdurable.random,
        pgdurable.uuid4,
        lambda: pgdurable.sleep_until(datetime.now().astimezone()),
    ):
        with pytest.raises(pgdurable.NotInWorkflow, match="only works inside a workflow"):
            call()
    assert pgdurable.current_run() is None


def test_app_on_a_database_without_the_schema_says_to_run_init(server_dsn: str) -> None:
    name = f"pgdurable_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        with pgdurable.App(with_db(server_dsn, name)) as app:

            @app.workflow(name="no.schema")
            def flow() -> None:
                return None

            with pytest.raises(pgdurable.SchemaMissing, match="pgdurable init"):
                app.check_schema()
            with pytest.raises(pgdurable.SchemaMissing, match="pgdurable init"):
                flow.start()
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'drop database "{name}" with (force)')
