"""Hardening: one bad run, one bad neighbour or one typo never takes a queue down.

A run's poisonous data fails that run alone; statement errors fail the operation while only a
lost connection hands a run back (counted, backed off, capped); limits are enforced where
values enter; workers claim only what they can run and say what they leave behind.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.support import query, running_worker, scalar, wait_until
from conftest import ROOT

PGDURABLE = str(Path(sys.executable).parent / "pgdurable")
FINISHED = ("completed", "failed", "cancelled")


def insert_run(dsn: str, name: str, input_text: str, queue: str = "pq") -> uuid.UUID:
    """A pending run written straight into the table, as a database written by an older
    release (or by hand) may hold it: no limit of start_run applies."""
    run_id = uuid.uuid4()
    query(
        dsn,
        "insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input,"
        " available_at, created_at, updated_at)"
        " values (%s, %s, %s, %s, 'pending', %s::jsonb, now(), now(), now())",
        (run_id, str(run_id), name, queue, input_text),
    )
    return run_id


def sql_start(dsn: str, name: str, args: list[Any], **options: Any) -> uuid.UUID:
    return uuid.UUID(
        str(
            scalar(
                dsn,
                "select pgdurable.start_run(%s, %s::jsonb, %s::jsonb)",
                (name, json.dumps({"args": args, "kwargs": {}}), json.dumps(options)),
            )
        )
    )


def outcome(dsn: str, run_id: Any) -> tuple[Any, ...]:
    (row,) = query(
        dsn,
        "select status, attempt, output, error ->> 'type', error ->> 'message'"
        " from pgdurable.runs where id = %s",
        (run_id,),
    )
    return row


# --- a run can only hurt itself ----------------------------------------------------------------


@pytest.mark.slow
def test_poisonous_runs_fail_alone_and_the_worker_process_goes_on(
    dsn: str, run_subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    nested = "[" * 10000 + "]" * 10000
    good = [sql_start(dsn, "p.echo", [i], queue="pq") for i in range(3)]
    deep = insert_run(dsn, "p.echo", '{"args": [' + nested + "]}")
    digits = insert_run(dsn, "p.echo", '{"args": [' + "9" * 4000 + "]}")
    good += [sql_start(dsn, "p.echo", [i], queue="pq") for i in range(3)]
    # an event payload that deep, once recorded as the waiter's checkpoint
    query(
        dsn,
        "insert into pgdurable.events (name, payload, created_at) values ('poison', %s, now())",
        (nested,),
    )
    waiter = sql_start(dsn, "p.wait", ["poison"], queue="pq")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [PGDURABLE, "worker", "apps.hardening_app:app", "--dsn", dsn, "--concurrency", "8"],
        cwd=ROOT / "tests",
        env=run_subprocess_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        everyone = [*good, deep, digits, waiter]
        wait_until(
            "every run to finish",
            lambda: scalar(
                dsn,
                "select count(*) = %s from pgdurable.runs"
                " where id = any(%s) and status in ('completed', 'failed')",
                (len(everyone), everyone),
            ),
            timeout=30,
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        for run in good:
            assert outcome(dsn, run)[:3] == ("completed", 1, 1)
        for run, words in (
            (deep, "nested too deeply"),
            (digits, "digits"),
            (waiter, "nested too deeply"),
        ):
            status, attempt, _, error_type, message = outcome(dsn, run)
            assert (status, attempt, error_type) == ("failed", 1, "pgdurable.SerializationError")
            assert words in message, message
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_sql_refuses_values_over_the_limits_with_pd003(dsn: str) -> None:
    cases = {
        "deep": '{"args": [' + "[" * 200 + "]" * 200 + "]}",
        "digits": '{"args": [' + "7" * 1500 + "]}",
    }
    for what, text in cases.items():
        with pytest.raises(psycopg.Error) as info:
            query(dsn, "select pgdurable.start_run('p.echo', %s::jsonb)", (text,))
        assert info.value.sqlstate == "PD003", what
        assert info.value.diag.message_hint and "pgdurable.settings" in info.value.diag.message_hint
    query(dsn, "update pgdurable.settings set max_value_bytes = 4096")
    with pytest.raises(psycopg.Error) as big:
        query(dsn, "select pgdurable.emit_event('e', to_jsonb(repeat('x', 10000)))")
    assert big.value.sqlstate == "PD003"
    assert "over the limit of 4096" in str(big.value)
    assert scalar(dsn, "select count(*) from pgdurable.runs") == 0
    assert scalar(dsn, "select count(*) from pgdurable.events") == 0


@pytest.mark.parametrize(
    "options",
    [
        {"delay": "NaN"},
        {"delay": "Infinity"},
        {"delay": 1e300},
        {"delay": -1},
        {"timeout": "NaN"},
        {"timeout": 0},
    ],
)
def test_sql_refuses_absurd_durations_with_pd004(dsn: str, options: dict[str, Any]) -> None:
    with pytest.raises(psycopg.Error) as info:
        sql_start(dsn, "p.echo", [], **options)
    assert info.value.sqlstate == "PD004"
    assert scalar(dsn, "select count(*) from pgdurable.runs") == 0


def test_absurd_durations_fail_at_the_python_call(app: pgdurable.App) -> None:
    @app.workflow(name="h.noop")
    def noop() -> None:
        return None

    for bad in (math.nan, math.inf, -1.0, 1e300):
        with pytest.raises(ValueError, match="delay"):
            noop.options(delay=bad)
        with pytest.raises(ValueError, match="timeout"):
            noop.options(timeout=bad)
        with pytest.raises(ValueError, match="lease"):
            pgdurable.App("postgresql://unused", lease=bad)
        with pytest.raises(ValueError, match="poll_interval"):
            app.worker(poll_interval=bad)
    with pytest.raises(ValueError, match="workflow_id"):
        noop.options(workflow_id="a\x00b")
    assert scalar(app.dsn, "select count(*) from pgdurable.runs") == 0


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


def test_whatever_a_workflow_raises_fails_only_that_run(app: pgdurable.App) -> None:
    @app.workflow(name="h.raise")
    def raiser(kind: str) -> Any:
        if kind == "unprintable":
            raise _UnprintableError()
        if kind == "nul-message":
            raise ValueError("bad\x00byte")
        if kind == "nul-result":
            return {"text": "a\x00b"}
        if kind == "memory":
            raise MemoryError("pretend the run ran out of memory")
        if kind == "recursion":

            def down(n: int) -> int:
                return down(n + 1) + 1

            return down(0)
        return "fine"

    kinds = ["unprintable", "nul-message", "nul-result", "memory", "recursion", "ok"]
    handles = {k: raiser.start(k) for k in kinds}
    with running_worker(app, concurrency=3):
        assert handles["ok"].result(timeout=15) == "fine"
        for kind in kinds[:-1]:
            with pytest.raises(pgdurable.WorkflowFailed) as info:
                handles[kind].result(timeout=15)
            assert info.value.message, kind
            assert outcome(app.dsn, handles[kind].run_id)[1] == 1, f"{kind} was retried"
    errors = {k: outcome(app.dsn, h.run_id)[3:] for k, h in handles.items()}
    assert errors["nul-message"] == ("ValueError", "bad\\x00byte")
    assert errors["nul-result"][0] == "pgdurable.SerializationError"
    assert "NUL" in errors["nul-result"][1]
    assert errors["memory"][0] == "MemoryError"
    assert errors["recursion"][0] == "RecursionError"
    assert errors["unprintable"][0].endswith("_UnprintableError")


def test_a_statement_error_fails_the_step_not_the_connection(app: pgdurable.App) -> None:
    """QueryCanceled is an OperationalError, yet the session is fine: the step's retry policy
    applies and the run fails in its first attempt, never handed back in a loop."""
    tries: list[int] = []

    @app.transaction(retry=pgdurable.Retry(max_attempts=2, initial_delay=0.01, jitter=False))
    def slow(conn: psycopg.Connection[Any]) -> None:
        tries.append(1)
        conn.execute("set local statement_timeout = '20ms'")
        conn.execute("select pg_sleep(1)")

    @app.workflow(name="h.cancelled")
    def flow() -> None:
        slow()

    handle = flow.start()
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        handle.result(timeout=15)
    assert info.value.error_type == "psycopg.errors.QueryCanceled"
    assert len(tries) == 2
    status, attempt, *_ = outcome(app.dsn, handle.run_id)
    assert (status, attempt) == ("failed", 1)
    assert scalar(app.dsn, "select disconnects + recoveries from pgdurable.runs") == 0


def test_a_step_result_over_the_size_limit_fails_that_step_at_once(dsn: str) -> None:
    with pgdurable.App(dsn, lease=2.0, limits=pgdurable.Limits(max_bytes=64 * 1024)) as app:
        calls: list[int] = []

        @app.step()
        def fetch() -> str:
            calls.append(1)
            return "x" * 100_000

        @app.workflow(name="h.big")
        def flow() -> str:
            return fetch()[:3]

        handle = flow.start()
        with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
            handle.result(timeout=15)
    assert info.value.error_type == "pgdurable.SerializationError"
    assert "limit" in info.value.message
    assert calls == [1], "a value too large to store was retried"


def test_a_run_history_over_256_mb_does_not_break_claims(dsn: str) -> None:
    """The claim used to aggregate a run's checkpoints into one jsonb value: over 256 MB every
    claim of the queue failed. Now the claim returns whether there is history at all."""
    heavy = sql_start(dsn, "h.heavy", [], queue="hq")
    light = sql_start(dsn, "h.light", [], queue="hq")
    query(
        dsn,
        "insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,"
        " run_attempt, completed_at)"
        " select %s, 's' || g, g, 'step', 's', to_jsonb(repeat(chr(65 + g), 30000000)), 1, now()"
        " from generate_series(0, 9) g",
        (heavy,),
    )
    rows = query(
        dsn,
        "select id, has_history from pgdurable.claim_runs('w', array['hq'], 10, 30,"
        " array['h.heavy', 'h.light'])",
    )
    assert sorted(rows) == sorted([(heavy, True), (light, False)])


# --- lost connections: counted, backed off, capped; a restart is free ------------------------


def test_lost_connections_back_off_and_are_capped(dsn: str) -> None:
    run = sql_start(dsn, "h.flaky", [], queue="fq", max_recoveries=3)
    delays = []
    for n in range(1, 5):
        query(dsn, "update pgdurable.runs set available_at = pgdurable.now() where id = %s", (run,))
        ((run_id, attempt),) = query(
            dsn, "select id, attempt from pgdurable.claim_runs('w', array['fq'], 1, 30, null)"
        )
        assert scalar(
            dsn,
            "select pgdurable.release_run(%s, %s, 'connection lost: test', 0, true)",
            (run_id, attempt),
        )
        status, delay, disconnects = query(
            dsn,
            "select status, extract(epoch from available_at - pgdurable.now()), disconnects"
            " from pgdurable.runs where id = %s",
            (run,),
        )[0]
        assert disconnects == n
        if n <= 3:
            assert status == "pending"
            delays.append(round(float(delay)))
    assert delays == [1, 2, 4]
    status, _, _, error_type, message = outcome(dsn, run)
    assert (status, error_type) == ("failed", "DeadLettered")
    assert "4 lost connections" in message


def test_a_server_restart_costs_no_recovery(dsn: str) -> None:
    run = sql_start(dsn, "h.restarted", [], queue="rq", max_recoveries=0)
    assert query(dsn, "select id from pgdurable.claim_runs('w', array['rq'], 1, 2, null)") == [
        (run,)
    ]
    # the worker's last heartbeat predates the server's start: the server restarted since
    query(
        dsn,
        "update pgdurable.runs set heartbeat_at = pg_postmaster_start_time() - interval '1 s'"
        " where id = %s",
        (run,),
    )
    query(dsn, "select pgdurable.shift_clock('1 minute')")
    query(dsn, "select pgdurable.tick()")
    status, _, _, _, _ = outcome(dsn, run)
    assert status == "pending", "a restart dead-lettered a healthy run"
    assert query(dsn, "select recoveries, note from pgdurable.runs")[0][0] == 0
    assert "server restarted" in scalar(dsn, "select note from pgdurable.runs")
    # the same expiry without a restart counts (and with max_recoveries 0, dead-letters)
    assert query(dsn, "select id from pgdurable.claim_runs('w', array['rq'], 1, 2, null)") == [
        (run,)
    ]
    query(dsn, "select pgdurable.shift_clock('1 minute')")
    query(dsn, "select pgdurable.tick()")
    assert outcome(dsn, run)[0] == "failed"


# --- gc, ids -----------------------------------------------------------------------------------


def test_gc_spares_children_of_unfinished_parents_and_dry_runs(dsn: str) -> None:
    parent = sql_start(dsn, "h.parent", [])
    child = sql_start(dsn, "h.child", [], parent_id=str(parent))
    orphan = sql_start(dsn, "h.child", [])
    for run in (child, orphan):
        query(dsn, "select pgdurable.cancel_run(%s)", (run,))
    query(dsn, "select pgdurable.shift_clock('2 days')")
    assert scalar(dsn, "select pgdurable.gc_runs('1 day', 100, true)") == 1
    assert scalar(dsn, "select count(*) from pgdurable.runs") == 3, "a dry run deleted"
    assert scalar(dsn, "select pgdurable.gc_runs('1 day')") == 1
    assert {r[0] for r in query(dsn, "select id from pgdurable.runs")} == {parent, child}


def test_a_workflow_id_cannot_borrow_another_runs_id(app: pgdurable.App) -> None:
    @app.workflow(name="h.victim")
    def victim() -> str:
        return pgdurable.recv(timeout=60)

    @app.workflow(name="h.thief")
    def thief() -> str:
        return "stolen"

    target = victim.options(workflow_id="order-victim").start()
    with pytest.raises(pgdurable.WorkflowIdConflict, match="is the id of another run"):
        thief.options(workflow_id=str(target.run_id)).start()
    with pytest.raises(pgdurable.WorkflowIdConflict):
        thief.options(workflow_id=str(target.run_id).upper()).start()
    # a uuid-shaped workflow_id of one's own becomes the run id: both lookups agree
    own = str(uuid.uuid4())
    mine = thief.options(workflow_id=own).start()
    assert str(mine.run_id) == own
    assert app.handle(own).run_id == mine.run_id
    assert app.handle(target.run_id).workflow_name == "h.victim"
    app.send(str(target.run_id), "for the victim")
    with running_worker(app):
        assert target.result(timeout=10) == "for the victim"
        assert mine.result(timeout=10) == "stolen"


def test_lookups_by_id_and_workflow_id_use_their_indexes(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "insert into pgdurable.runs (id, workflow_id, workflow_name, status, input, available_at,"
        " created_at, updated_at) select gen_random_uuid(), 'bulk-' || g, 'bulk', 'completed',"
        " '{}', now(), now(), now() from generate_series(1, 20000) g"
    )
    conn.execute("analyze pgdurable.runs")
    from pgdurable._queries import Q
    from pgdurable._starting import run_key

    for key in ("bulk-17", str(uuid.uuid4())):
        plan = "\n".join(
            r[0] for r in conn.execute(b"explain " + Q["run_by_workflow_id"].encode(), run_key(key))
        )
        assert "Seq Scan" not in plan, plan


# --- workers take only work they can do --------------------------------------------------------


def test_workers_of_two_apps_on_one_queue_take_only_their_own_runs(dsn: str) -> None:
    with pgdurable.App(dsn, lease=2.0) as shop, pgdurable.App(dsn, lease=2.0) as mail:

        @shop.workflow(name="shop.order")
        def order(n: int) -> str:
            return f"order {n}"

        @mail.workflow(name="mail.send")
        def send(n: int) -> str:
            return f"mail {n}"

        mails = [send.start(n) for n in range(5)]
        orders = [order.start(n) for n in range(5)]
        with running_worker(shop):
            assert [h.result(timeout=10) for h in orders] == [f"order {n}" for n in range(5)]
        assert {
            r[0]
            for r in query(
                dsn, "select distinct attempt from pgdurable.runs where workflow_name = 'mail.send'"
            )
        } == {0}
        with running_worker(mail):
            assert [h.result(timeout=10) for h in mails] == [f"mail {n}" for n in range(5)]
    assert scalar(dsn, "select max(attempt) from pgdurable.runs") == 1


def test_sql_starts_use_the_queue_the_workers_registered(app: pgdurable.App) -> None:
    @app.workflow(name="h.ship", queue="shipping")
    def ship() -> str:
        return "shipped"

    with running_worker(app):
        run = sql_start(app.dsn, "h.ship", [])
        assert app.handle(run).result(timeout=10) == "shipped"
    assert scalar(app.dsn, "select queue_name from pgdurable.runs where id = %s", (run,)) == (
        "shipping"
    )
    assert query(app.dsn, "select name, queue_name from pgdurable.workflows") == [
        ("h.ship", "shipping")
    ]


def test_worker_warns_about_workflows_on_queues_it_does_not_claim(
    app: pgdurable.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.workflow(name="h.child")
    def child() -> str:
        return "child"

    @app.workflow(name="h.parent", queue="orders")
    def parent() -> str:
        return child()

    with (
        caplog.at_level(logging.WARNING, logger="pgdurable.worker"),
        running_worker(app, queues=["orders"]),
    ):
        pass
    (warning,) = [r for r in caplog.records if "will wait for another worker" in r.getMessage()]
    assert "h.child (queue default)" in warning.getMessage()


def test_generator_functions_are_refused_at_decoration_and_async_ones_accepted(
    app: pgdurable.App,
) -> None:
    def numbers() -> Any:
        yield 1

    async def tokens() -> Any:
        yield "a"

    async def fetch(*_: Any) -> str:
        return "x"

    for kind, decorator in (
        ("workflow", app.workflow),
        ("step", app.step),
        ("transaction", app.transaction),
    ):
        for gen in (numbers, tokens):
            with pytest.raises(TypeError, match=rf"@app\.{kind}\(\) got the generator function"):
                decorator(name=f"gen.{kind}.{gen.__name__}")(gen)
        assert decorator(name=f"ok.{kind}")(fetch).is_async is True
    assert set(app.workflows) == {"ok.workflow"}, "a refused workflow is not registered"


# --- logs an operator can use ------------------------------------------------------------------


def test_runs_and_step_retries_are_logged_with_fields(
    app: pgdurable.App, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[int] = []

    @app.step(retry=pgdurable.Retry(max_attempts=3, initial_delay=0.01, jitter=False))
    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"upstream down ({len(tries)})")
        return "up"

    @app.workflow(name="h.logged")
    def flow() -> str:
        return flaky()

    with caplog.at_level(logging.INFO, logger="pgdurable"):
        handle = flow.start()
        with running_worker(app):
            assert handle.result(timeout=10) == "up"
    retries = [r for r in caplog.records if getattr(r, "step", None) == "flaky"]
    assert [(r.attempt, r.delay) for r in retries] == [(1, 0.01), (2, 0.02)]  # type: ignore[attr-defined]
    assert all(r.run_id == str(handle.run_id) for r in retries)  # type: ignore[attr-defined]
    assert "upstream down (1)" in retries[0].error  # type: ignore[attr-defined]
    outcomes = [
        r.outcome  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "run_id", None) == str(handle.run_id) and hasattr(r, "outcome")
    ]
    assert outcomes == ["completed"]
    assert any(r.getMessage().endswith("claimed, attempt 1") for r in caplog.records)


def test_repeated_pool_warnings_are_rate_limited() -> None:
    from pgdurable._runtime import _RateLimitedPoolLog

    now = [0.0]
    limiter = _RateLimitedPoolLog(every=60.0, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, text, None, None)

    passed = [limiter.filter(record("error connecting: refused")) for _ in range(100)]
    assert passed.count(True) == 1
    assert limiter.filter(record("error connecting: timeout")), "a new message is a new state"
    assert not limiter.filter(record("error connecting: timeout"))
    now[0] = 61.0
    reminder = record("error connecting: timeout")
    assert limiter.filter(reminder)
    assert "still failing; 1 similar lines hidden" in reminder.getMessage()
    assert limiter.filter(record("pool is healthy")) and not limiter.filter(
        record("pool is healthy")
    )


def test_runs_lists_why_a_pending_run_has_no_worker(app: pgdurable.App) -> None:
    from click.testing import CliRunner

    from pgdurable_cli.main import cli

    @app.workflow(name="h.served", queue="elsewhere")
    def served() -> str:
        return "ok"

    typo = app.start("h.srved", allow_unregistered=True)
    other_queue = served.start()
    with running_worker(app, queues=["default"]):
        listing = CliRunner().invoke(cli, ["runs", "--dsn", app.dsn, "--json"])
        reasons = {r["id"]: r["unserved"] for r in json.loads(listing.output)}
        table = CliRunner().invoke(cli, ["runs", "--dsn", app.dsn]).output
    assert reasons[str(typo.run_id)] == "no worker has registered workflow h.srved"
    assert reasons[str(other_queue.run_id)] == (
        "no live worker serves workflow h.served on queue elsewhere"
    )
    assert "no worker has registered workflow h.srved" in table


def test_start_by_name_uses_the_workflows_queue(dsn: str) -> None:
    with pgdurable.App(dsn) as worker_app, pgdurable.App(dsn) as web:

        @worker_app.workflow(name="h.mail", queue="mail")
        def mail() -> str:
            return "sent"

        by_definer = worker_app.start("h.mail")
        with running_worker(worker_app):
            by_web = web.start("h.mail")  # this App does not define it; the registry does
            assert by_web.result(timeout=10) == "sent"
            assert by_definer.result(timeout=10) == "sent"
    assert query(dsn, "select distinct queue_name from pgdurable.runs") == [("mail",)]


def test_show_and_steps_survive_a_value_over_the_limits(dsn: str) -> None:
    from click.testing import CliRunner

    from pgdurable_cli.main import cli

    nested = "[" * 5000 + "]" * 5000
    run = insert_run(dsn, "h.deep", '{"args": []}')
    query(
        dsn,
        "insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,"
        " run_attempt, completed_at) values (%s, 's', 0, 'step', 's', %s::jsonb, 1, now())",
        (run, nested),
    )
    shown = CliRunner().invoke(cli, ["show", str(run), "--dsn", dsn])
    assert shown.exit_code == 0, shown.output
    assert "not decoded" in shown.output
    with pgdurable.App(dsn) as app, pytest.raises(pgdurable.SerializationError, match="nested"):
        app.handle(run).steps()


def test_a_cancel_after_the_last_durable_operation_ends_the_run_cancelled(
    app: pgdurable.App, tmp_path: Path
) -> None:
    """complete_run refuses a run whose cancel was requested (PD005): the worker must end it
    cancelled, not lose it to lease expiry and replay it until it is dead-lettered."""
    gate = tmp_path / "gate"

    @app.workflow(name="h.plain")
    def plain() -> str:
        from apps.support import wait_for_file

        wait_for_file(gate)
        return "done"

    handle = plain.start()
    with running_worker(app):
        wait_until("the run to start", lambda: handle.status() == "running")
        assert handle.cancel() == "cancelling"
        gate.touch()
        with pytest.raises(pgdurable.RunCancelled):
            handle.result(timeout=10)
    assert outcome(app.dsn, handle.run_id)[:2] == ("cancelled", 1)


@pytest.mark.slow
def test_a_claimed_run_waiting_for_its_connection_keeps_its_lease(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed runs are held (heartbeated) from the claim on: a run whose execution waits (for
    a pooled connection, here for a gate in front of it) is not taken over when its lease
    would have lapsed."""
    gate = threading.Event()
    execute = pgdurable.Worker._execute

    def delayed(self: pgdurable.Worker, row: tuple[Any, ...], held: Any) -> str:
        gate.wait(30)
        return execute(self, row, held)

    monkeypatch.setattr(pgdurable.Worker, "_execute", delayed)
    with pgdurable.App(dsn, lease=1.0) as app:

        @app.workflow(name="h.queued")
        def queued() -> str:
            return "ran"

        handle = queued.start()
        try:
            with running_worker(app):
                wait_until("the run to be claimed", lambda: handle.status() == "running")
                deadline = time.monotonic() + 3.0  # three leases
                while time.monotonic() < deadline:
                    assert (
                        query(
                            dsn,
                            "select id from pgdurable.claim_runs('thief', array['default'], 5, 30)",
                        )
                        == []
                    ), "the waiting run's lease lapsed"
                    time.sleep(0.1)
                gate.set()
                assert handle.result(timeout=15) == "ran"
        finally:
            gate.set()
    assert query(dsn, "select attempt from pgdurable.runs") == [(1,)]
