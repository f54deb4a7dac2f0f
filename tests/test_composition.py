"""Child workflows, gather, cancellation, deadlines, resume, sagas, on_failure, determinism."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgdurable
from apps import waiting_app
from apps.support import query, running_worker, scalar, shift_clock, wait_status, wait_until
from apps.waiting_app import Spawn, effects, start_in_process
from test_crash import kill9
from test_waiting import checkpoints

# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


@pytest.fixture
def spawn(run_subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    with waiting_app.worker_processes(run_subprocess_env, tmp_path) as spawn:
        yield spawn


FINISHED = ("completed", "failed", "cancelled")


def status_of(dsn: str, run_id: Any) -> str:
    return str(scalar(dsn, "select status from pgdurable.runs where id = %s", (run_id,)))


# --- children, gather ----------------------------------------------------------------------------


def test_gather_children_on_one_slot_without_deadlock(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def square(n: int) -> int:
        return n * n

    @app.workflow()
    def fan_out(k: int) -> list[int]:
        handles = [square.start(i) for i in range(k)]
        total = square(10)  # a direct call inside a workflow = start a child and wait for it
        return [*pgdurable.gather(*handles), total]

    h = fan_out.start(4)
    with running_worker(app, concurrency=1):  # parent and children share the only slot
        assert h.result(timeout=15) == [0, 1, 4, 9, 100]
    children = query(
        dsn,
        "select workflow_id, status from pgdurable.runs where parent_id = %s order by 1",
        (h.run_id,),
    )
    assert len(children) == 5 and {s for _, s in children} == {"completed"}
    assert [k for k, _ in checkpoints(dsn, h.run_id)] == ["child"] * 5 + ["result"] * 5


def test_waiting_parent_holds_no_slot_and_child_failure_reaches_it(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def failing(gate: str) -> None:
        pgdurable.wait_for_event(gate)
        raise pgdurable.NonRetryableError("child broke")

    @app.workflow()
    def parent() -> list[str]:
        try:
            failing.start("child-gate").result()
        except pgdurable.WorkflowFailed as exc:
            return [exc.error_type, exc.message]
        return ["no error"]

    h = parent.start()
    with running_worker(app, concurrency=1):
        wait_until(
            "parent waiting on its child",
            lambda: scalar(
                dsn,
                "select wait_for like 'run:%%' and worker_id is null from pgdurable.runs "
                "where id = %s",
                (h.run_id,),
            ),
        )
        app.emit_event("child-gate")
        assert h.result(timeout=10) == ["pgdurable.NonRetryableError", "child broke"]


def test_a_child_start_is_checkpointed_and_not_repeated_by_a_replay(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow()
    def kid() -> str:
        return "kid"

    @app.workflow()
    def parent() -> str:
        handle = kid.start()
        pgdurable.sleep(60)
        return handle.result()

    h = parent.options(workflow_id="p-1").start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        assert h.result(timeout=10) == "kid"
    assert query(
        dsn, "select workflow_id from pgdurable.runs where parent_id = %s", (h.run_id,)
    ) == [(f"p-1/{kid.name}",)]


def test_one_options_object_started_twice_gives_two_children(app: pgdurable.App) -> None:
    @app.workflow()
    def echo(n: int) -> int:
        return n

    @app.workflow()
    def parent() -> list[int]:
        call = echo.options(priority=5)
        first, second = call.start(1), call.start(2)
        return [first.result(), second.result()]

    with running_worker(app):
        assert parent.start().result(timeout=15) == [1, 2]


@pytest.mark.slow
def test_child_started_once_across_a_kill(dsn: str, spawn: Spawn, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    app, h, victim = start_in_process(
        dsn, spawn, "waiting.parent", ["pc", str(gate)], started="after-child-start-start"
    )
    kill9(victim)
    gate.touch()
    shift_clock(dsn, "1 minute")
    with running_worker(app):
        assert h.result(timeout=20) == "child of pc"
    assert scalar(dsn, "select count(*) from pgdurable.runs where parent_id = %s", (h.run_id,)) == 1
    assert effects(dsn, "pc", "after-child-start") == 1
    app.close()


# --- cancellation --------------------------------------------------------------------------------


def test_cancel_pending_waiting_finished_and_unknown_runs(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def waits() -> Any:
        return pgdurable.wait_for_event("never")

    @app.workflow()
    def quick() -> int:
        return 1

    pending = waits.start()
    assert pending.cancel() == "cancelled"  # no worker needed
    with pytest.raises(pgdurable.RunCancelled):
        pending.result(timeout=5)

    waiting, done = waits.start(), quick.start()
    with running_worker(app):
        wait_status(dsn, waiting.run_id, "waiting")
        assert done.result(timeout=10) == 1
    assert scalar(dsn, "select pgdurable.cancel_run(%s)", (waiting.run_id,)) == "cancelled"
    assert scalar(dsn, "select count(*) from pgdurable.timers") == 0
    assert done.cancel() == "completed"  # a clear answer, nothing raised, nothing changed
    assert waiting.cancel() == "cancelled"
    assert done.status() == "completed"
    with pytest.raises(pgdurable.RunNotFound):
        pgdurable.RunHandle(app, uuid.uuid4(), "x", "quick").cancel()


def test_cancelling_a_running_run_raises_cancelled_at_its_next_durable_operation(
    app: pgdurable.App, dsn: str
) -> None:
    inside, release = threading.Event(), threading.Event()
    seen: list[str] = []

    @app.step()
    def slow() -> str:
        inside.set()
        release.wait(10)
        return "slow done"

    @app.step()
    def after() -> str:
        seen.append("after ran")
        return "after"

    @app.workflow()
    def long_job() -> str:
        try:
            slow()
            after()
        except pgdurable.Cancelled:
            seen.append("Cancelled raised")
            raise
        return "finished"

    h = long_job.start()
    with running_worker(app):
        assert inside.wait(10)
        assert h.cancel() == "cancelling"
        release.set()
        with pytest.raises(pgdurable.RunCancelled):
            h.result(timeout=10)
    assert seen == ["Cancelled raised"]
    assert h.status() == "cancelled"


def test_cancelling_a_parent_cancels_its_children(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def kid(i: int) -> Any:
        return pgdurable.wait_for_event(f"kid-{i}")

    @app.workflow()
    def parent() -> list[Any]:
        return pgdurable.gather(*[kid.start(i) for i in range(2)])

    h = parent.start()
    with running_worker(app):
        wait_until(
            "two waiting children",
            lambda: scalar(
                dsn,
                "select count(*) = 2 from pgdurable.runs where parent_id = %s "
                "and status = 'waiting'",
                (h.run_id,),
            ),
        )
        wait_status(dsn, h.run_id, "waiting")
        assert h.cancel() == "cancelled"
    assert query(dsn, "select distinct status from pgdurable.runs") == [("cancelled",)]


# --- deadlines -----------------------------------------------------------------------------------


def test_deadline_fails_the_run_with_no_worker_alive(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def waits() -> Any:
        return pgdurable.wait_for_event("never")

    never_claimed = waits.options(timeout=60).start()
    h = waits.options(timeout=60).start()
    with running_worker(app):
        wait_status(dsn, h.run_id, "waiting")
    never_claimed_too = waits.options(timeout=3600).start()
    shift_clock(dsn, "2 minutes")
    assert scalar(dsn, "select pgdurable.tick()") >= 2  # no worker: the engine alone
    for run in (h, never_claimed):
        with pytest.raises(pgdurable.WorkflowFailed) as info:
            run.result(timeout=5)
        assert info.value.error_type == "pgdurable.DeadlineExceeded"
    assert never_claimed_too.status() == "pending"
    assert scalar(dsn, "select count(*) from pgdurable.timers") == 0


def test_children_inherit_the_parents_deadline(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def kid() -> Any:
        return pgdurable.wait_for_event("never")

    @app.workflow()
    def parent() -> Any:
        return kid.options(timeout=86400).start().result()  # asks for more than it may have

    h = parent.options(timeout=120).start()
    with running_worker(app):
        wait_until(
            "the child waiting",
            lambda: scalar(
                dsn,
                "select status = 'waiting' from pgdurable.runs where parent_id = %s",
                (h.run_id,),
            ),
        )
        assert scalar(
            dsn,
            "select c.deadline_at = p.deadline_at from pgdurable.runs c "
            "join pgdurable.runs p on p.id = c.parent_id where p.id = %s",
            (h.run_id,),
        )
    shift_clock(dsn, "3 minutes")
    scalar(dsn, "select pgdurable.tick()")
    assert query(dsn, "select distinct status, error ->> 'type' from pgdurable.runs") == [
        ("failed", "pgdurable.DeadlineExceeded")
    ]


def test_deadline_passing_while_a_step_runs_is_fenced(app: pgdurable.App, dsn: str) -> None:
    inside, release = threading.Event(), threading.Event()

    @app.step()
    def stuck() -> str:
        inside.set()
        release.wait(10)
        return "late"

    @app.workflow()
    def job() -> str:
        return stuck()

    h = job.options(timeout=30).start()
    with running_worker(app):
        assert inside.wait(10)
        shift_clock(dsn, "1 minute")
        scalar(dsn, "select pgdurable.tick()")
        release.set()
        with pytest.raises(pgdurable.WorkflowFailed) as info:
            h.result(timeout=10)
        assert info.value.error_type == "pgdurable.DeadlineExceeded"
    assert checkpoints(dsn, h.run_id) == []  # the late step's checkpoint was rejected


# --- resume / retry ------------------------------------------------------------------------------


def test_resume_and_retry_restart_a_failed_run_from_its_last_checkpoint(
    app: pgdurable.App, dsn: str
) -> None:
    calls: list[str] = []
    broken = {"yes": True}

    @app.step()
    def first() -> str:
        calls.append("first")
        return "one"

    @app.step()
    def second() -> str:
        calls.append("second")
        if broken["yes"]:
            raise pgdurable.NonRetryableError("dependency down")
        return "two"

    @app.workflow()
    def job() -> list[str]:
        return [first(), second()]

    h, h2 = job.start(), job.start()
    with running_worker(app):
        for run in (h, h2):
            with pytest.raises(pgdurable.WorkflowFailed):
                run.result(timeout=10)
        broken["yes"] = False
        h.resume()
        assert h.result(timeout=10) == ["one", "two"]
        assert scalar(dsn, "select pgdurable.retry_run(%s)", (h2.run_id,)) is True
        assert h2.result(timeout=10) == ["one", "two"]
    assert calls.count("first") == 2  # once per run: resumes replayed it
    with pytest.raises(pgdurable.InvalidState):
        h.resume()  # completed runs cannot be resumed


def test_resume_a_cancelled_run(app: pgdurable.App, dsn: str) -> None:
    @app.workflow()
    def waits() -> Any:
        return pgdurable.wait_for_event("go-on")

    h = waits.start()
    with running_worker(app):
        wait_status(dsn, h.run_id, "waiting")
        assert h.cancel() == "cancelled"
        h.resume()
        wait_status(dsn, h.run_id, "waiting")
        app.emit_event("go-on", "resumed")
        assert h.result(timeout=10) == "resumed"


# --- sagas and on_failure ------------------------------------------------------------------------


def test_saga_compensations_run_in_reverse_once_each_then_the_run_fails(
    app: pgdurable.App, dsn: str
) -> None:
    log: list[str] = []
    flaky = {"left": 1}

    @app.step()
    def charge(n: int) -> int:
        log.append(f"charge {n}")
        return n

    @app.step(retry=pgdurable.Retry(max_attempts=3, initial_delay=0.01))
    def refund(n: int) -> int:
        if flaky["left"]:
            flaky["left"] -= 1
            raise ConnectionError("refund API hiccup")
        log.append(f"refund {n}")
        return n

    def release_hold(n: int) -> None:  # a plain function works too
        log.append(f"release {n}")

    @app.step()
    def ship() -> None:
        raise pgdurable.NonRetryableError("out of stock")

    @app.workflow()
    def order() -> None:
        charge(1)
        pgdurable.compensate(refund, 1)
        charge(2)
        pgdurable.compensate(release_hold, 2)
        ship()

    h = order.start()
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        h.result(timeout=10)
    assert (info.value.error_type, info.value.message) == (
        "pgdurable.NonRetryableError",
        "out of stock",
    )
    assert log == ["charge 1", "charge 2", "release 2", "refund 1"]
    assert query(
        dsn,
        "select step_key, attempts from pgdurable.checkpoints where run_id = %s "
        "and step_key like 'undo:%%' order by seq",
        (h.run_id,),
    ) == [("undo:release_hold", 1), ("undo:refund", 2)]


def test_a_compensation_failing_for_good_does_not_hide_the_original_error(
    app: pgdurable.App, dsn: str
) -> None:
    log: list[str] = []

    @app.step(retry=pgdurable.Retry(max_attempts=2, initial_delay=0.01))
    def cancel_booking() -> None:
        raise RuntimeError("booking API gone")

    @app.step()
    def refund() -> None:
        log.append("refund")

    @app.step()
    def boom() -> None:
        raise pgdurable.NonRetryableError("boom")

    @app.workflow()
    def trip() -> None:
        pgdurable.compensate(refund)
        pgdurable.compensate(cancel_booking)
        boom()

    h = trip.start()
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        h.result(timeout=10)
    assert (info.value.error_type, info.value.message) == ("pgdurable.NonRetryableError", "boom")
    assert log == ["refund"]  # the older compensation still ran
    assert query(
        dsn,
        "select step_key, attempts, error ->> 'message' from pgdurable.checkpoints "
        "where run_id = %s and step_key like 'undo:%%' order by seq",
        (h.run_id,),
    ) == [("undo:cancel_booking", 2, "booking API gone"), ("undo:refund", 1, None)]


def test_cancelling_a_waiting_saga_runs_its_compensations(app: pgdurable.App, dsn: str) -> None:
    log: list[str] = []

    @app.step()
    def reserve(seat: str) -> str:
        log.append(f"reserve {seat}")
        return seat

    @app.step()
    def unreserve(seat: str) -> None:
        log.append(f"unreserve {seat}")

    @app.workflow()
    def booking() -> Any:
        reserve("12A")
        pgdurable.compensate(unreserve, "12A")
        return pgdurable.wait_for_event("paid")

    h = booking.start()
    with running_worker(app):
        wait_status(dsn, h.run_id, "waiting")
        assert h.cancel() == "cancelling"  # a worker must run the compensation first
        with pytest.raises(pgdurable.RunCancelled):
            h.result(timeout=10)
    assert log == ["reserve 12A", "unreserve 12A"]


@pytest.mark.slow
def test_compensations_run_once_each_across_a_kill_in_the_middle(
    dsn: str, spawn: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app, h, victim = start_in_process(
        dsn, spawn, "waiting.saga", ["sg", str(gate)], started="refund-1-start"
    )
    kill9(victim)  # refund 2 is checkpointed, refund 1 is in flight
    gate.touch()
    shift_clock(dsn, "1 minute")
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed, match="card declined"):
        h.result(timeout=20)
    for what in ("charge-1", "charge-2", "declined", "refund-2", "refund-1"):
        assert effects(dsn, "sg", what) == 1, what
    order = [
        r[0]
        for r in query(
            dsn,
            "select what from side_effects where what in ('refund-1', 'refund-2') order by ctid",
        )
    ]
    assert order == ["refund-2", "refund-1"]
    app.close()


def test_on_failure_gets_the_failed_step_error_input_and_outputs_once(
    app: pgdurable.App, dsn: str
) -> None:
    reports: list[dict[str, Any]] = []

    @app.step()
    def fetch(order: str) -> dict[str, str]:
        return {"order": order}

    @app.step()
    def pay(order: str) -> None:
        raise pgdurable.NonRetryableError(f"no funds for {order}")

    @app.workflow(on_failure=reports.append)
    def checkout(order: str) -> None:
        fetch(order)
        pay(order)

    h = checkout.start("o-5")
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed, match="no funds for o-5"):
        h.result(timeout=10)
    assert len(reports) == 1
    info = reports[0]
    assert info["run_id"] == str(h.run_id) and info["workflow_name"] == checkout.name
    assert info["failed_step"] == "pay"
    assert info["error"]["type"] == "pgdurable.NonRetryableError"
    assert info["input"] == {"args": ["o-5"], "kwargs": {}}
    assert info["steps"] == {"fetch": {"order": "o-5"}}
    assert ("step", "on_failure") in checkpoints(dsn, h.run_id)


# --- determinism and versioning ------------------------------------------------------------------


def test_now_random_uuid4_return_recorded_values_on_replay(app: pgdurable.App, dsn: str) -> None:
    seen: list[list[str]] = []

    @app.workflow()
    def decide() -> list[str]:
        values = [pgdurable.now().isoformat(), str(pgdurable.random()), str(pgdurable.uuid4())]
        seen.append(values)
        pgdurable.sleep(60)
        return values

    h = decide.start()
    with running_worker(app, poll_interval=0.1):
        wait_status(dsn, h.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        result = h.result(timeout=10)
    assert len(seen) == 2 and seen[0] == seen[1] == result
    assert 0 <= float(result[1]) < 1 and uuid.UUID(result[2]).version == 4


def test_patched_is_false_for_runs_recorded_before_the_change(dsn: str) -> None:
    def build(version: str) -> pgdurable.App:
        app = pgdurable.App(dsn, lease=2.0)

        @app.step()
        def first() -> str:
            return "a"

        @app.step()
        def added() -> str:
            return "b"

        @app.workflow(name="deploy")
        def deploy() -> list[Any]:
            out: list[Any] = [first()]
            if version == "new":
                out.append(pgdurable.patched("add-step-b"))
                if out[-1]:
                    out.append(added())
            elif version == "unguarded":
                out.append(added())
            pgdurable.sleep(60)
            return out

        return app

    old = build("old")
    in_flight = old.start("deploy")
    doomed = old.start("deploy", queue="doomed")  # kept apart for the unguarded deploy
    with running_worker(old, queues=["default", "doomed"]):
        for run in (in_flight, doomed):
            wait_status(dsn, run.run_id, "sleeping")
    old.close()

    new, unguarded = build("new"), build("unguarded")
    shift_clock(dsn, "2 minutes")
    with (
        running_worker(unguarded, poll_interval=0.1, queues=["doomed"]),
        pytest.raises(pgdurable.WorkflowFailed) as info,
    ):
        doomed.result(timeout=10)
    assert info.value.error_type == "pgdurable.NonDeterminismError"
    fresh = new.start("deploy")
    with running_worker(new, poll_interval=0.1):
        assert new.handle(in_flight.run_id).result(timeout=10) == ["a", False]
        wait_status(dsn, fresh.run_id, "sleeping")
        shift_clock(dsn, "2 minutes")
        assert fresh.result(timeout=10) == ["a", True, "b"]
    new.close()
    unguarded.close()


# --- bad inputs ----------------------------------------------------------------------------------


def test_composition_primitives_outside_a_workflow_raise_not_in_workflow() -> None:
    for call in (
        lambda: pgdurable.gather(),
        lambda: pgdurable.compensate(print, 1),
        lambda: pgdurable.patched("x"),
        pgdurable.now,
        pgdurable.random,
        pgdurable.uuid4,
    ):
        with pytest.raises(pgdurable.NotInWorkflow):
            call()


def test_bad_composition_inputs(app: pgdurable.App, dsn: str) -> None:
    @app.step()
    def undo(x: Any) -> None:
        pass

    @app.workflow()
    def bad_compensation() -> None:
        pgdurable.compensate(undo, object())

    @app.workflow()
    def kid() -> int:
        return 1

    @app.workflow()
    def result_with_timeout() -> int:
        return kid.start().result(timeout=5)

    with pytest.raises(ValueError, match="timeout"):
        kid.options(timeout=-1)
    h1, h2 = bad_compensation.start(), result_with_timeout.start()
    with running_worker(app):
        with pytest.raises(pgdurable.WorkflowFailed) as info:
            h1.result(timeout=10)
        assert info.value.error_type == "pgdurable.SerializationError"
        with pytest.raises(pgdurable.WorkflowFailed) as info:
            h2.result(timeout=10)
        assert info.value.error_type == "ValueError"
    assert checkpoints(dsn, h1.run_id) == []
