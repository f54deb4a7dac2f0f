"""Events and messages: happy paths, lost wake-ups, replays, timeouts, crashes, bad inputs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from apps import crash_app, waiting_app
from apps.support import query, running_worker, scalar, shift_clock, wait_status, wait_until
from apps.waiting_app import Spawn, effects, start_in_process
from test_crash import kill9

# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


def checkpoints(dsn: str, run_id: Any) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in query(
            dsn,
            "select kind, step_key from pgdurable.checkpoints where run_id = %s order by seq",
            (run_id,),
        )
    ]


# --- events ------------------------------------------------------------------------------------


def test_event_wakes_a_waiting_run_that_holds_no_worker(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def approval(order: str) -> Any:
        return pgdurable.wait_for_event(f"approved:{order}")

    h = approval.start("o-1")
    with running_worker(app):
        wait_status(dsn, h.run_id, "waiting")
        assert query(
            dsn,
            "select worker_id, lease_expires_at, wait_for from pgdurable.runs where id = %s",
            (h.run_id,),
        ) == [(None, None, "event:approved:o-1")]
        app.emit_event("approved:o-1", {"by": "ann"})
        assert h.result(timeout=10) == {"by": "ann"}
    assert checkpoints(dsn, h.run_id) == [("event", "approved:o-1")]


def test_event_emitted_before_the_wait_is_received(app: pgdurable.App) -> None:
    @app.workflow()
    def late() -> Any:
        return pgdurable.wait_for_event("ready")

    app.emit_event("ready", [1, 2])
    h = late.start()
    with running_worker(app):
        assert h.result(timeout=10) == [1, 2]


def test_one_emit_wakes_every_waiter_and_sql_emit_works(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def waiter(i: int) -> Any:
        return [i, pgdurable.wait_for_event("go")]

    handles = [waiter.start(i) for i in range(3)]
    with running_worker(app):
        for h in handles:
            wait_status(dsn, h.run_id, "waiting")
        query(dsn, """select pgdurable.emit_event('go', '{"n": 7}')""")
        assert [h.result(timeout=10) for h in handles] == [[i, {"n": 7}] for i in range(3)]


def test_reemitted_name_gives_new_waiters_the_newest_payload(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def first_then_sleep() -> Any:
        got = pgdurable.wait_for_event("fact")
        pgdurable.sleep(60)  # forces a replay after the re-emit below
        return got

    @app.workflow()
    def newcomer() -> Any:
        return pgdurable.wait_for_event("fact")

    app.emit_event("fact", "v1")
    h1 = first_then_sleep.start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h1.run_id, "sleeping")
        app.emit_event("fact", "v2")  # an operator corrects the fact
        h2 = newcomer.start()
        assert h2.result(timeout=10) == "v2"
        shift_clock(dsn, "2 minutes")
        # The replay returns the checkpointed payload, not the newer event.
        assert h1.result(timeout=10) == "v1"


def test_waiting_run_resumes_on_emit_without_a_poll_interval(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def wait_go() -> Any:
        return pgdurable.wait_for_event("fast")

    h = wait_go.start()
    with running_worker(app, concurrency=2, poll_interval=30):
        wait_status(dsn, h.run_id, "waiting")
        time.sleep(0.2)  # let the worker go back to its 30 s idle wait
        t0 = time.perf_counter()
        app.emit_event("fast", 1)
        assert h.result(timeout=5) == 1
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"emit -> result took {elapsed:.3f} s: the worker polled"


def test_event_timeout_is_recorded_and_replayed(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def approve_or_timeout() -> str:
        try:
            pgdurable.wait_for_event("never", timeout=3600)
        except pgdurable.EventTimeout as exc:
            assert isinstance(exc, TimeoutError)
            pgdurable.sleep(60)  # replay after this: the timeout must replay, not the event
            return "timed out"
        return "approved"

    h = approve_or_timeout.start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "waiting")
        assert scalar(dsn, "select count(*) from pgdurable.timers where run_id = %s", (h.run_id,))
        shift_clock(dsn, "61 minutes")
        wait_status(dsn, h.run_id, "sleeping")
        app.emit_event("never", "too late")
        shift_clock(dsn, "2 minutes")
        assert h.result(timeout=10) == "timed out"
    err = scalar(
        dsn,
        "select error ->> 'type' from pgdurable.checkpoints where run_id = %s and kind = 'event'",
        (h.run_id,),
    )
    assert err == "pgdurable.EventTimeout"


def test_zero_timeout_with_the_event_present_returns_it(app: pgdurable.App) -> None:
    @app.workflow()
    def poll_once() -> Any:
        return pgdurable.wait_for_event("present", timeout=0)

    app.emit_event("present", "here")
    with running_worker(app):
        assert poll_once.start().result(timeout=10) == "here"


def test_emit_in_the_callers_transaction_exists_only_if_it_commits(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def wait_paid() -> Any:
        return pgdurable.wait_for_event("paid:o-9")

    h = wait_paid.start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "waiting")
        with psycopg.connect(dsn) as conn:
            app.emit_event("paid:o-9", "rolled back", conn=conn)
            conn.rollback()
        time.sleep(0.3)
        assert h.status() == "waiting"
        assert scalar(dsn, "select count(*) from pgdurable.events") == 0
        with psycopg.connect(dsn) as conn:
            conn.execute("create table if not exists paid (id text)")
            conn.execute("insert into paid values ('o-9')")
            app.emit_event("paid:o-9", "committed", conn=conn)
            conn.commit()
        assert h.result(timeout=10) == "committed"


def test_emit_inside_a_workflow_is_checkpointed(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def announcer() -> str:
        app.emit_event("announced", {"from": "workflow"})
        pgdurable.sleep(60)  # the replay after this must not emit again
        return "done"

    @app.workflow()
    def listener() -> Any:
        return pgdurable.wait_for_event("announced")

    hl = listener.start()
    ha = announcer.start()
    with running_worker(app, poll_interval=0.1):
        assert hl.result(timeout=10) == {"from": "workflow"}
        wait_status(dsn, ha.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        assert ha.result(timeout=10) == "done"
    assert scalar(dsn, "select count(*) from pgdurable.events where name = 'announced'") == 1
    assert ("emit", "announced") in checkpoints(dsn, ha.run_id)


# --- messages ----------------------------------------------------------------------------------


def test_messages_are_fifo_per_topic_by_workflow_id_run_id_and_sql(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def mailbox() -> list[Any]:
        return [
            pgdurable.recv("a"),
            pgdurable.recv("b"),
            pgdurable.recv("a"),
            pgdurable.recv("a"),
            pgdurable.recv(),
        ]

    h = mailbox.options(workflow_id="box-1").start()
    app.send("box-1", "a1", topic="a")
    app.send(h.run_id, "b1", topic="b")
    app.send("box-1", "a2", topic="a")
    with running_worker(app):
        wait_status(dsn, h.run_id, "waiting")  # waits for the third "a"
        query(dsn, """select pgdurable.send_message('box-1', '"a3"', 'a')""")
        wait_until(
            "the run to wait for the default topic",
            lambda: (
                scalar(dsn, "select wait_for from pgdurable.runs where id = %s", (h.run_id,))
                == "message:"
            ),
        )
        app.send("box-1", {"plain": True})
        assert h.result(timeout=10) == ["a1", "b1", "a2", "a3", {"plain": True}]
    assert scalar(dsn, "select count(*) from pgdurable.messages where consumed_at is null") == 0


def test_a_message_is_consumed_once_across_a_replay(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def two() -> list[Any]:
        first = pgdurable.recv()
        pgdurable.sleep(60)
        return [first, pgdurable.recv()]

    h = two.start()
    app.send(h.run_id, 1)
    app.send(h.run_id, 2)
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        assert h.result(timeout=10) == [1, 2]


def test_send_inside_a_workflow_is_checkpointed(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def receiver() -> Any:
        return pgdurable.recv("ping")

    @app.workflow()
    def sender(target: str) -> str:
        app.send(target, "hello", topic="ping")
        pgdurable.sleep(60)
        return "sent"

    hr = receiver.options(workflow_id="rx").start()
    hs = sender.start("rx")
    with running_worker(app, poll_interval=0.1):
        assert hr.result(timeout=10) == "hello"
        wait_status(dsn, hs.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        assert hs.result(timeout=10) == "sent"
    assert scalar(dsn, "select count(*) from pgdurable.messages") == 1


def test_recv_timeout_with_the_shifted_clock(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def patient() -> str:
        try:
            pgdurable.recv("x", timeout=120)
        except pgdurable.MessageTimeout as exc:
            assert isinstance(exc, TimeoutError)
            return "no message"
        return "message"

    h = patient.start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "waiting")
        shift_clock(dsn, "3 minutes")
        assert h.result(timeout=10) == "no message"


def test_send_to_unknown_or_finished_runs_is_a_clear_error(app: pgdurable.App) -> None:
    @app.workflow()
    def quick() -> int:
        return 1

    with pytest.raises(pgdurable.RunNotFound):
        app.send("nobody", 1)
    with pytest.raises(pgdurable.RunNotFound):
        app.send("00000000-0000-0000-0000-000000000000", 1)
    h = quick.start()
    with running_worker(app):
        assert h.result(timeout=10) == 1
    with pytest.raises(pgdurable.InvalidState, match="completed"):
        app.send(h.workflow_id, 1)


# --- bad inputs --------------------------------------------------------------------------------


def test_primitives_outside_a_workflow_raise_not_in_workflow() -> None:
    with pytest.raises(pgdurable.NotInWorkflow):
        pgdurable.wait_for_event("x")
    with pytest.raises(pgdurable.NotInWorkflow):
        pgdurable.recv()
    with pytest.raises(pgdurable.NotInWorkflow):
        pgdurable.recv("topic", timeout=5)


def test_negative_timeouts_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout"):
        pgdurable.wait_for_event("x", timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        pgdurable.recv(timeout=-0.5)


def test_negative_timeout_inside_a_workflow_fails_the_run_without_waiting(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def bad() -> Any:
        return pgdurable.wait_for_event("x", timeout=-5)

    h = bad.start()
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        h.result(timeout=10)
    assert info.value.error_type == "ValueError"
    assert checkpoints(dsn, h.run_id) == []


def test_non_json_payloads_are_rejected_before_anything_is_written(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def inbox() -> Any:
        return pgdurable.recv()

    h = inbox.start()
    with pytest.raises(pgdurable.SerializationError):
        app.emit_event("e", {"when": object()})
    with pytest.raises(pgdurable.SerializationError):
        app.send(h.run_id, [1, {2, 3}])
    assert scalar(dsn, "select count(*) from pgdurable.events") == 0
    assert scalar(dsn, "select count(*) from pgdurable.messages") == 0


# --- crashes -----------------------------------------------------------------------------------


@pytest.fixture
def spawn(run_subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    with waiting_app.worker_processes(run_subprocess_env, tmp_path) as spawn:
        yield spawn


@pytest.mark.slow
def test_event_payload_survives_a_kill_after_it_was_received(
    dsn: str, spawn: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app, h, victim = start_in_process(dsn, spawn, "waiting.event", ["ev", "ok:o-7", str(gate)])
    wait_status(dsn, h.run_id, "waiting")
    app.emit_event("ok:o-7", {"by": "ann"})
    wait_until("the step after the event to start", lambda: effects(dsn, "ev", "after-event-start"))
    kill9(victim)  # the payload is checkpointed, the next step is in flight

    app.emit_event("ok:o-7", {"by": "bob"})  # a newer fact must not change this run
    gate.touch()
    shift_clock(dsn, "1 minute")
    with running_worker(app):
        assert h.result(timeout=20) == {"by": "ann"}
    assert effects(dsn, "ev", "after-event") == 1
    app.close()


@pytest.mark.slow
def test_waiting_run_outlives_its_worker(dsn: str, spawn: Spawn, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    app, h, victim = start_in_process(dsn, spawn, "waiting.event", ["orphan", "late", str(gate)])
    wait_status(dsn, h.run_id, "waiting")
    kill9(victim)  # nothing to take over: a waiting run has no lease
    app.emit_event("late", "finally")
    with running_worker(app):
        assert h.result(timeout=20) == "finally"
    app.close()


@pytest.mark.slow
def test_message_consumed_exactly_once_across_a_kill(
    dsn: str, spawn: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    crash_app.prepare(dsn)
    app = waiting_app.build(dsn)
    h = app.start("waiting.recv", ["mq", str(gate)])
    app.send(h.run_id, "m1", topic="jobs")
    app.send(h.run_id, "m2", topic="jobs")
    victim = spawn()
    wait_until("the step after recv to start", lambda: effects(dsn, "mq", "after-recv-start"))
    kill9(victim)
    assert query(
        dsn, "select payload, consumed_at is not null from pgdurable.messages order by id"
    ) == [("m1", True), ("m2", False)]

    gate.touch()
    shift_clock(dsn, "1 minute")
    with running_worker(app):
        assert h.result(timeout=20) == ["m1", "m2"]
    assert scalar(dsn, "select count(*) from pgdurable.messages where consumed_at is not null") == 2
    assert [k for k, _ in checkpoints(dsn, h.run_id)] == ["message", "step", "message"]
    app.close()
