"""Workflows the waiting/composition crash tests kill workers in.

Run as ``python -m apps.run_worker apps.waiting_app``. Each gated step records its start and
its end in ``side_effects`` (see crash_app.note) and blocks on a gate file in between, so a
test can kill the worker at the exact point where a wait, a message, a child start or a
compensation has been checkpointed and the next operation has not.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import pgdurable

from .crash_app import note, prepare
from .flavours import FlavouredApp
from .support import scalar, spawn_workers, wait_for_file, wait_until

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def worker_processes(env: dict[str, str], log_dir: Path) -> ContextManager[Spawn]:
    """Worker processes of this app, started by ``spawn()``; killed at the end of the block."""
    return spawn_workers("apps.waiting_app", env, log_dir)


def effects(dsn: str, tag: str, what: str) -> int:
    """How many times the side effect ``what`` of ``tag`` really happened."""
    return int(
        scalar(dsn, "select count(*) from side_effects where tag = %s and what = %s", (tag, what))
    )


def start_in_process(
    dsn: str, spawn: Spawn, workflow: str, args: list[Any], started: str | None = None
) -> tuple[pgdurable.App, pgdurable.RunHandle[Any], subprocess.Popen[bytes]]:
    """Create the tables, start a run of ``workflow`` and a worker process; wait until the
    process has recorded the side effect ``started`` (of tag ``args[0]``) if given."""
    prepare(dsn)
    app = build(dsn)
    handle = app.start(workflow, args)
    proc = spawn()
    if started is not None:
        wait_until(f"{started!r} in the worker process", lambda: effects(dsn, args[0], started))
    return app, handle, proc


def build(dsn: str, lease: float = 2.0) -> pgdurable.App:
    app: pgdurable.App = FlavouredApp(dsn, lease=lease)

    @app.step()
    def gated(tag: str, what: str, gate: str) -> str:
        note(dsn, tag, f"{what}-start")
        wait_for_file(gate)
        note(dsn, tag, what)
        return what

    @app.step()
    def charge(tag: str, n: int) -> int:
        note(dsn, tag, f"charge-{n}")
        return n

    @app.step()
    def refund(tag: str, n: int, gate: str) -> int:
        note(dsn, tag, f"refund-{n}-start")
        if n == 1:  # the second compensation to run (they run in reverse)
            wait_for_file(gate)
        note(dsn, tag, f"refund-{n}")
        return n

    @app.step()
    def decline(tag: str) -> None:
        note(dsn, tag, "declined")
        raise pgdurable.NonRetryableError("card declined")

    @app.workflow(name="waiting.event")
    def event_then_gate(tag: str, name: str, gate: str) -> Any:
        payload = pgdurable.wait_for_event(name)
        gated(tag, "after-event", gate)
        return payload

    @app.workflow(name="waiting.recv")
    def recv_then_gate(tag: str, gate: str) -> list[Any]:
        first = pgdurable.recv("jobs")
        gated(tag, "after-recv", gate)
        second = pgdurable.recv("jobs")
        return [first, second]

    @app.workflow(name="waiting.child")
    def child(tag: str) -> str:
        note(dsn, tag, "child-ran")
        return f"child of {tag}"

    @app.workflow(name="waiting.parent")
    def parent(tag: str, gate: str) -> str:
        handle = child.start(tag)
        gated(tag, "after-child-start", gate)
        result: str = handle.result()
        return result

    @app.workflow(name="waiting.saga")
    def saga(tag: str, gate: str) -> None:
        charge(tag, 1)
        pgdurable.compensate(refund, tag, 1, gate)
        charge(tag, 2)
        pgdurable.compensate(refund, tag, 2, gate)
        decline(tag)

    return app
