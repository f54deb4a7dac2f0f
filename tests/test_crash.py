"""Crash tests: real worker processes killed with SIGKILL or stopped with SIGTERM mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pgdurable
from apps import crash_app
from apps.support import listeners, query, running_worker, scalar, shift_clock, wait_until
from conftest import PYTHON, ROOT

pytestmark = pytest.mark.slow

Spawn = Callable[[], subprocess.Popen[bytes]]


# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


@pytest.fixture
def spawn_worker(run_subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    """Starts ``python -m apps.run_worker apps.crash_app`` subprocesses; kills leftovers."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [PYTHON, "-m", "apps.run_worker", "apps.crash_app", "2"],
            cwd=ROOT / "tests",
            env=run_subprocess_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def effects(dsn: str, tag: str, what: str) -> int:
    return int(
        scalar(dsn, "select count(*) from side_effects where tag = %s and what = %s", (tag, what))
    )


def step_keys(dsn: str, run_id: object) -> list[str]:
    return [
        r[0]
        for r in query(
            dsn,
            "select step_key from pgdurable.checkpoints where run_id = %s order by seq",
            (run_id,),
        )
    ]


def start_on_subprocess(
    dsn: str, spawn: Spawn, gate: Path, workflow: str, tag: str, started: str
) -> tuple[pgdurable.App, pgdurable.RunHandle[object], subprocess.Popen[bytes]]:
    """Create the app tables, start a run of ``workflow`` and a worker process, and wait until
    that process has recorded the side effect ``started`` (it then blocks on ``gate``)."""
    crash_app.prepare(dsn)
    app = crash_app.build(dsn)
    handle = app.start(workflow, [tag, str(gate)])
    proc = spawn()
    wait_until(f"{started!r} in the worker process", lambda: effects(dsn, tag, started))
    return app, handle, proc


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def test_killed_worker_resumes_elsewhere_without_rerunning_checkpointed_step(
    dsn: str, spawn_worker: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app, handle, victim = start_on_subprocess(
        dsn, spawn_worker, gate, "crash.replay", "r", started="s2-start"
    )
    assert step_keys(dsn, handle.run_id) == ["mark"]
    kill9(victim)

    gate.touch()
    shift_clock(dsn, "1 minute")  # the victim's 2 s lease is long gone
    with running_worker(app):
        assert handle.result(timeout=20) == ["s1", "s2"]

    assert effects(dsn, "r", "s1") == 1, "the checkpointed step ran again"
    assert effects(dsn, "r", "s2") == 1
    assert step_keys(dsn, handle.run_id) == ["mark", "gated"]
    pids = dict(query(dsn, "select what, pid from side_effects where what in ('s1', 's2')"))
    assert pids["s1"] == victim.pid and pids["s2"] == os.getpid()
    assert query(
        dsn, "select attempt, recoveries from pgdurable.runs where id = %s", (handle.run_id,)
    ) == [(2, 1)]


def _uncommitted_transactions(dsn: str) -> int:
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and state like 'idle in transaction%%'",
        )
    )


def test_worker_killed_inside_transaction_step_leaves_nothing_then_writes_once(
    dsn: str, spawn_worker: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app, handle, victim = start_on_subprocess(
        dsn, spawn_worker, gate, "crash.tx", "t", started="tx-inside"
    )
    wait_until(
        "the transaction step to hold its insert open", lambda: _uncommitted_transactions(dsn)
    )
    kill9(victim)
    wait_until(
        "the server to roll back the dead worker's transaction",
        lambda: _uncommitted_transactions(dsn) == 0,
    )
    assert scalar(dsn, "select count(*) from orders") == 0
    assert step_keys(dsn, handle.run_id) == []

    gate.touch()
    shift_clock(dsn, "1 minute")
    with running_worker(app):
        assert handle.result(timeout=20) == "after-tx"
    assert query(dsn, "select tag, attempt from orders") == [("t", 2)]
    assert query(
        dsn,
        "select step_key, run_attempt from pgdurable.checkpoints "
        "where run_id = %s and kind = 'transaction'",
        (handle.run_id,),
    ) == [("write_order", 2)]


def test_sigterm_hands_the_run_back_and_exits_zero(
    dsn: str, spawn_worker: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app, handle, proc = start_on_subprocess(
        dsn, spawn_worker, gate, "crash.term", "g", started="s1-start"
    )
    proc.send_signal(signal.SIGTERM)
    gate.touch()  # let the current step finish: the worker stops at the next durable operation
    assert proc.wait(20) == 0

    row = query(
        dsn,
        "select status, worker_id, lease_expires_at, available_at <= pgdurable.now(), "
        "note from pgdurable.runs where id = %s",
        (handle.run_id,),
    )
    assert row == [("pending", None, None, True, "worker shutting down")]
    assert step_keys(dsn, handle.run_id) == ["gated"]
    # Claimable at once: no lease to wait out, no clock shift.
    claimed = query(
        dsn, "select id, attempt from pgdurable.claim_runs('next', array['default'], 5)"
    )
    assert claimed == [(handle.run_id, 2)]
    query(dsn, "select pgdurable.release_run(%s, 2)", (handle.run_id,))
    with running_worker(app):
        assert handle.result(timeout=20) == ["s1", "s2"]
    assert effects(dsn, "g", "s1") == 1
    assert effects(dsn, "g", "s2") == 1


def test_idle_worker_exits_zero_on_sigterm(dsn: str, spawn_worker: Spawn) -> None:
    proc = spawn_worker()
    wait_until(
        "the worker process to LISTEN",
        lambda: listeners(dsn),
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
