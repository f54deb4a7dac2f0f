"""Async workflows beyond what the both-flavours engine tests cover: the two drivers carry out the
same requests, mixing the flavours wrongly fails with a message that says what to do, async
transaction steps are atomic on an AsyncConnection, a cancelled task hands its run back, and one
event loop runs many runs on few connections."""

from __future__ import annotations

import ast
import asyncio
import inspect
import threading
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.async_support import run_async, until
from apps.support import query, running_worker, scalar, wait_until
from pgdurable import _drive, _ops


def _handled_requests(cls: type) -> set[str]:
    """The request types ``cls._perform`` dispatches on (``type(op) is X``)."""
    tree = ast.parse(inspect.getsource(cls))
    return {
        node.comparators[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and isinstance(node.ops[0], ast.Is)
        and isinstance(node.comparators[0], ast.Name)
    }


def test_both_drivers_carry_out_every_request_a_plan_can_make() -> None:
    every = {t.__name__ for t in _ops.OPERATIONS}
    assert _handled_requests(_drive.SyncDriver) == every
    assert _handled_requests(_drive.AsyncDriver) == every
    assert {n for n in vars(_drive.SyncDriver) if not n.startswith("__")} == {
        n for n in vars(_drive.AsyncDriver) if not n.startswith("__")
    } - {"_owner", "_depth"}, "the drivers expose the same operations"


def test_flavours_mixed_wrongly_fail_the_run_saying_what_to_do(app: pgdurable.App) -> None:
    @app.step()
    async def fetch() -> str:
        return "x"

    @app.transaction()
    def plain_write(conn: psycopg.Connection[Any]) -> None:
        conn.execute("select 1")

    @app.workflow(name="mix.sync_calls_async")
    def sync_flow() -> str:
        return fetch()  # type: ignore[return-value]

    @app.workflow(name="mix.async_calls_plain_tx")
    async def async_flow() -> None:
        await plain_write()  # type: ignore[func-returns-value]

    @app.workflow(name="mix.sync_sleeps_async")
    def sleeps_async() -> None:
        asyncio.run(pgdurable.sleep_async(1))

    @app.workflow(name="mix.async_sleeps_sync")
    async def sleeps_sync() -> None:
        pgdurable.sleep(1)

    runs = {
        "sync workflow, async step": sync_flow.start(),
        "async workflow, plain transaction": async_flow.start(),
        "sync workflow, sleep_async": sleeps_async.start(),
        "async workflow, sleep": sleeps_sync.start(),
    }
    with running_worker(app):
        errors = {}
        for what, handle in runs.items():
            with pytest.raises(pgdurable.WorkflowFailed) as info:
                handle.result(timeout=15)
            assert info.value.error_type == "TypeError", what
            errors[what] = info.value.message
    assert (
        "step 'fetch' is an async def but runs in a plain (sync) workflow"
        in errors["sync workflow, async step"]
    )
    assert (
        "make it `async def` (it receives a psycopg.AsyncConnection"
        in errors["async workflow, plain transaction"]
    )
    assert errors["sync workflow, sleep_async"] == (
        "pgdurable.sleep_async() is the async form, and this workflow is a plain (sync) one: "
        "call pgdurable.sleep() instead"
    )
    assert errors["async workflow, sleep"] == (
        "pgdurable.sleep() is the sync form, and this workflow is async: "
        "`await pgdurable.sleep_async(...)` instead"
    )
    assert scalar(app.dsn, "select count(*) from pgdurable.checkpoints") == 0, "nothing recorded"


def test_concurrent_durable_operations_of_one_run_are_refused(app: pgdurable.App) -> None:
    @app.step()
    async def one(n: int) -> int:
        await asyncio.sleep(0.05)
        return n

    @app.workflow(name="async.gather_steps")
    async def flow() -> list[int]:
        return list(await asyncio.gather(one(1), one(2)))

    handle = flow.start()
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        handle.result(timeout=15)
    assert info.value.error_type == "pgdurable.ConcurrentOperations"
    assert "await them one at a time" in info.value.message
    assert "pgdurable.gather_async" in info.value.message


def test_an_async_transaction_step_commits_its_writes_with_its_checkpoint_or_neither(
    app: pgdurable.App,
) -> None:
    query(app.dsn, "create table payments (id text primary key, attempt int not null)")
    tries: list[int] = []

    @app.transaction(retry=pgdurable.Retry(max_attempts=3, initial_delay=0.01))
    async def pay(conn: psycopg.AsyncConnection[Any], pid: str) -> int:
        tries.append(1)
        await conn.execute("insert into payments values (%s, %s)", (pid, len(tries)))
        if len(tries) < 3:
            raise ConnectionRefusedError("the bank hung up after our insert")
        return len(tries)

    @app.workflow(name="async.pay")
    async def flow(pid: str) -> int:
        return await pay(pid)

    handle = flow.start("p-1")
    with running_worker(app):
        assert handle.result(timeout=15) == 3
    assert query(app.dsn, "select id, attempt from payments") == [("p-1", 3)]
    assert query(
        app.dsn,
        "select step_key, kind, attempts from pgdurable.checkpoints where run_id = %s",
        (handle.run_id,),
    ) == [("pay", "transaction", 3)]


def test_a_cancelled_task_hands_its_run_back_and_the_run_completes_later(
    app: pgdurable.App,
) -> None:
    inside = threading.Event()

    @app.step()
    async def slow() -> str:
        inside.set()
        await asyncio.sleep(30)
        return "slow"

    @app.step()
    async def fast() -> str:
        return "fast"

    @app.workflow(name="async.cancelled_task")
    async def flow() -> str:
        if pgdurable.current_run().attempt == 1:  # type: ignore[union-attr]
            return await slow()
        return await fast()

    async def call_then_cancel() -> None:
        task = asyncio.create_task(flow())  # a direct call: executed in this task
        await until("the step to start", inside.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(app, call_then_cancel)
    ((run_id, status, note),) = query(app.dsn, "select id, status, note from pgdurable.runs")
    assert (status, note) == ("pending", "worker task cancelled")
    with running_worker(app):
        assert app.handle(str(run_id)).result(timeout=15) == "fast"


def test_one_event_loop_runs_many_runs_at_once_on_few_connections(app: pgdurable.App) -> None:
    in_step: list[int] = []
    peak = [0]
    lock = threading.Lock()

    @app.step()
    async def call_api(n: int) -> int:
        with lock:
            in_step.append(n)
            peak[0] = max(peak[0], len(in_step))
        await asyncio.sleep(0.3)  # a slow API: the run holds no connection meanwhile
        with lock:
            in_step.remove(n)
        return n

    @app.workflow(name="async.many")
    async def flow(n: int) -> int:
        return await call_api(n) + await call_api(n)

    handles = [flow.start(i) for i in range(40)]
    # Three connections for forty runs: were a run to hold one through its step, at most three
    # steps could be in flight at once.
    with running_worker(app, concurrency=1, async_concurrency=40, async_connections=3) as w:
        wait_until("twenty runs in their step at once", lambda: peak[0] >= 20)
        assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(40)]
        assert w.completed == 40
    assert scalar(app.dsn, "select count(*) from pgdurable.checkpoints") == 80
