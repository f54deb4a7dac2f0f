"""Pausing runs: pending, sleeping and waiting runs pause at once; a running one parks at its next
durable operation; a paused run holds no worker and ignores its timer until resumed, then goes
on from its last checkpoint; cancel and pause compose."""

from __future__ import annotations

import threading
import time

from click.testing import CliRunner

import pgdurable
from apps.support import query, running_worker, scalar, shift_clock, wait_status, wait_until
from pgdurable_cli.main import cli

# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


def test_a_sleeping_run_pauses_at_once_and_resumes_from_its_checkpoints(app: pgdurable.App) -> None:
    calls: list[str] = []

    @app.step()
    def before() -> str:
        calls.append("before")
        return "b"

    @app.workflow(name="pause.sleeper")
    def sleeper() -> str:
        first = before()
        pgdurable.sleep(3600)
        return first + "-after"

    handle = sleeper.start()
    with running_worker(app, poll_interval=0.05):
        wait_status(app.dsn, handle.run_id, "sleeping")
        assert handle.pause() == "paused"
        assert scalar(app.dsn, "select count(*) from pgdurable.timers") == 0
        shift_clock(app.dsn, "2 hours")
        time.sleep(0.5)  # claims and ticks go on: a paused run is neither woken nor claimed
        assert handle.status() == "paused"
        assert handle.pause() == "paused", "pausing twice is harmless"
        handle.resume()
        assert handle.result(timeout=15) == "b-after"
    assert calls == ["before"], "the step before the pause was not run again"


def test_a_running_run_parks_at_its_next_durable_operation(app: pgdurable.App) -> None:
    inside, go = threading.Event(), threading.Event()

    @app.step()
    def slow() -> str:
        inside.set()
        go.wait(30)
        return "slow"

    @app.step()
    def after() -> str:
        return "after"

    @app.workflow(name="pause.runner")
    def runner() -> list[str]:
        return [slow(), after()]

    handle = runner.start()
    with running_worker(app, poll_interval=0.05):
        assert inside.wait(15)
        assert handle.pause() == "pausing"
        # the heartbeat carries the request to the worker; the step in flight finishes
        wait_until(
            "the worker to see the request",
            lambda: (
                scalar(app.dsn, "select count(*) from pgdurable.runs where pause_requested") == 1
            ),
        )
        time.sleep(app.lease)  # at least one heartbeat after the request
        go.set()
        wait_status(app.dsn, handle.run_id, "paused")
        assert query(app.dsn, "select worker_id, lease_expires_at, note from pgdurable.runs") == [
            (None, None, "paused")
        ]
        assert [s["step_key"] for s in handle.steps()] == ["slow"], "parked before 'after'"
        handle.resume()
        assert handle.result(timeout=15) == ["slow", "after"]


def test_pending_and_finished_runs_and_cancel_and_the_command_line(app: pgdurable.App) -> None:
    @app.workflow(name="pause.quick")
    def quick() -> str:
        return "done"

    pending = quick.start()
    result = CliRunner().invoke(cli, ["pause", str(pending.run_id), "--dsn", app.dsn])
    assert result.exit_code == 0 and result.stdout.startswith("paused run")
    cancelled = quick.start()
    assert cancelled.pause() == "paused"
    assert cancelled.cancel() == "cancelled"
    with running_worker(app, poll_interval=0.05):
        time.sleep(0.5)
        assert pending.status() == "paused", "a paused run is not claimed"
        resumed = CliRunner().invoke(cli, ["resume", str(pending.run_id), "--dsn", app.dsn])
        assert resumed.exit_code == 0
        assert pending.result(timeout=15) == "done"
    assert pending.pause() == "completed", "a finished run stays as it is"
    assert cancelled.status() == "cancelled"
