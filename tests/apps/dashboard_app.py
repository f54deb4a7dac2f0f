"""Runs in every state for the dashboard tests (tests/test_dashboard*.py), made by a real App
and Worker: completed (with a child), failed (a step that fails until told not to), sleeping,
waiting for an event, cancelled, pending (a queue no worker serves), and hostile strings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg

import pgdurable

HOSTILE_ID = '<script>alert("pwned")</script>'
HOSTILE_ERROR = '<img src=x onerror="alert(1)">&amp;'


class Flags:
    """What the flaky step does: fail (until a test flips it) and whether it may finish."""

    def __init__(self) -> None:
        self.charge_fails = True
        self.release = threading.Event()


def define(app: pgdurable.App, flags: Flags) -> dict[str, Any]:
    """The workflows, registered on ``app``."""

    @app.step()
    def reserve(order: str) -> str:
        return f"reserved {order}"

    @app.step(retry=pgdurable.Retry(max_attempts=2, initial_delay=0.01))
    def charge(order: str) -> int:
        if flags.charge_fails:
            raise RuntimeError(f"card declined for {order}")
        return 999

    @app.workflow(name="dash_order")
    def order(name: str) -> dict[str, Any]:
        note = reserve(name)
        cents = charge(name)
        return {"note": note, "cents": cents}

    @app.workflow(name="dash_batch")
    def batch(names: list[str]) -> list[Any]:
        return [order(n) for n in names]

    @app.workflow(name="dash_nap")
    def nap(name: str) -> str:
        reserve(name)
        pgdurable.sleep(timedelta(hours=1))
        return "rested"

    @app.workflow(name="dash_approval")
    def approval(name: str) -> Any:
        reserve(name)
        return pgdurable.wait_for_event(f"approve:{name}", timeout=timedelta(days=1))

    @app.step()
    def hold(name: str) -> str:
        flags.release.wait(30)
        return name

    @app.workflow(name="dash_busy")
    def busy(name: str) -> str:
        return hold(name)

    @app.workflow(name="dash_hostile")
    def hostile(text: str) -> None:
        raise ValueError(text)

    @app.workflow(name="dash_inbox")
    def inbox(name: str) -> Any:
        reserve(name)
        return pgdurable.recv(topic="go", timeout=timedelta(days=1))

    @app.workflow(name="dash_backlog", queue="nobody-serves")
    def backlog(name: str) -> str:
        return name

    return {
        "order": order,
        "batch": batch,
        "nap": nap,
        "approval": approval,
        "busy": busy,
        "hostile": hostile,
        "backlog": backlog,
        "inbox": inbox,
    }


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def status_of(dsn: str, workflow_id: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select status from pgdurable.runs where workflow_id = %s", (workflow_id,)
        ).fetchone()
    return None if row is None else str(row[0])


@contextmanager
def worker_thread(app: pgdurable.App) -> Iterator[pgdurable.Worker]:
    # not the queue "nobody-serves": its runs stay pending, unserved
    worker = app.worker(concurrency=4, queues=["default"], poll_interval=0.2)
    thread = threading.Thread(target=worker.run, name="dashboard-test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)


def make_runs(
    app: pgdurable.App, dsn: str, wfs: dict[str, Any], flags: Flags, *, busy: bool
) -> dict[str, str]:
    """Start one run per state and wait until each is in it; returns {state: workflow_id}.
    A worker must be running (worker_thread)."""
    ids = {
        "completed": "order-ok",
        "failed": "order-declined",
        "sleeping": "nap-1",
        "waiting": "approval-1",
        "cancelled": "approval-cancelled",
        "pending": "backlog-1",
        "parent": "batch-1",
        "hostile": HOSTILE_ID,
    }
    wfs["order"].options(workflow_id=ids["failed"]).start("o-declined")
    wait_until(lambda: status_of(dsn, ids["failed"]) == "failed", "the failed run")
    wfs["nap"].options(workflow_id=ids["sleeping"]).start("n1")
    wfs["approval"].options(workflow_id=ids["waiting"]).start("a1")
    wfs["approval"].options(workflow_id=ids["cancelled"]).start("a2")
    wfs["backlog"].options(workflow_id=ids["pending"]).start("b1")
    wfs["hostile"].options(workflow_id=ids["hostile"]).start(HOSTILE_ERROR)
    wait_until(lambda: status_of(dsn, ids["cancelled"]) == "waiting", "the run to cancel")
    app.handle(ids["cancelled"]).cancel()
    flags.charge_fails = False
    wfs["order"].options(workflow_id=ids["completed"]).start("o-ok")
    wfs["batch"].options(workflow_id=ids["parent"]).start(["kid-a", "kid-b"])
    if busy:
        ids["running"] = "busy-1"
        wfs["busy"].options(workflow_id=ids["running"]).start("b")
    expected = {
        "completed": "completed",
        "failed": "failed",
        "sleeping": "sleeping",
        "waiting": "waiting",
        "cancelled": "cancelled",
        "pending": "pending",
        "parent": "completed",
        "hostile": "failed",
        "running": "running",
    }
    for state, workflow_id in ids.items():
        wait_until(
            lambda w=workflow_id, s=expected[state]: status_of(dsn, w) == s,
            f"run {workflow_id} to be {expected[state]}",
        )
    flags.charge_fails = True
    return ids


@contextmanager
def serving(web: Any) -> Iterator[str]:
    """Serve the ASGI app ``web`` with uvicorn on a free loopback port in a thread; yields its
    base URL. The server is stopped (and its lifespan closes the pool) on exit."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the dashboard server to start", timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
