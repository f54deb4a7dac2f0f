"""The async client (what FastAPI/Starlette services call) against a real PostgreSQL: starts in
the caller's async transaction, ``await handle.result_async()`` woken by NOTIFY on one shared
listener, cancel/resume/steps/status, events and messages, the same validation as the sync
calls, the App's async pool across event loops, and a check that the sync and async surfaces
expose the same operations. Runs are executed by a sync worker in a thread; each test drives
its own event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.async_support import run_async, until
from apps.support import query, running_worker, scalar, wait_status, wait_until
from pgdurable._definitions import WorkflowCall
from pgdurable._handle import RunHandle


def run_count(dsn: str) -> int:
    return int(scalar(dsn, "select count(*) from pgdurable.runs"))


def done_listeners(dsn: str) -> int:
    """Sessions of the database that LISTEN for ended runs (result waiters)."""
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and query ilike 'listen pgdurable_done%%'",
        )
    )


# --- starting ----------------------------------------------------------------------------------


def test_start_async_in_the_callers_transaction_exists_only_if_it_commits(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.double")
    def double(x: int) -> int:
        return x * 2

    async def body() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await double.options(workflow_id="rolled-back", conn=conn).start_async(1)
            await app.start_async("async.double", [2], conn=conn)
            await conn.rollback()
            assert run_count(dsn) == 0, "a start in a rolled-back transaction left a run"

            kept = await double.options(workflow_id="kept", conn=conn).start_async(21)
            by_name = await app.start_async("async.double", [5], conn=conn, workflow_id="n-1")
            assert run_count(dsn) == 0, "visible before the caller committed"
            await conn.commit()
        assert kept.workflow_id == "kept" and by_name.workflow_id == "n-1"
        assert await kept.status_async() == "pending"
        pooled = await double.start_async(50)
        with running_worker(app):
            return [await h.result_async(timeout=15) for h in (kept, by_name, pooled)]

    assert run_async(app, body) == [42, 10, 100]
    assert query(dsn, "select input from pgdurable.runs order by input->'args'->>0") == [
        ({"args": [21], "kwargs": {}},),
        ({"args": [5], "kwargs": {}},),
        ({"args": [50], "kwargs": {}},),
    ]


def test_start_async_is_idempotent_on_workflow_id_like_start(app: pgdurable.App) -> None:
    @app.workflow(name="async.idem")
    def flow(x: int) -> int:
        return x

    first = flow.options(workflow_id="order-1").start(1)

    async def body() -> None:
        again = await flow.options(workflow_id="order-1").start_async(2)
        assert again == first
        with pytest.raises(pgdurable.WorkflowIdConflict, match="order-1"):
            await flow.options(workflow_id="order-1", on_conflict="raise").start_async(3)
        found = await app.handle_async("order-1")
        assert (found.run_id, found.workflow_id, found.workflow_name) == (
            first.run_id,
            "order-1",
            "async.idem",
        )
        assert (await app.handle_async(first.run_id)).workflow_id == "order-1"

    run_async(app, body)


# --- waiting for a result ----------------------------------------------------------------------


def test_result_async_returns_what_a_sync_worker_computed(app: pgdurable.App) -> None:
    @app.step()
    def add(a: int, b: int) -> int:
        return a + b

    @app.workflow(name="async.sum")
    def total(xs: list[int]) -> dict[str, int]:
        acc = 0
        for x in xs:
            acc = add(acc, x)
        return {"total": acc}

    async def body() -> tuple[Any, Any, str, list[dict[str, Any]]]:
        h = await total.start_async([1, 2, 3])
        with running_worker(app, poll_interval=30):
            # the worker wakes on the start's NOTIFY; the result on the end's
            out = await h.result_async(timeout=15)
        again = await h.result_async(timeout=0.01)  # finished: no waiting at all
        return out, again, await h.status_async(), await h.steps_async()

    out, again, status, steps = run_async(app, body)
    assert out == again == {"total": 6}
    assert status == "completed"
    assert [(s["step_key"], s["kind"], s["output"]) for s in steps] == [
        ("add", "step", 1),
        ("add#2", "step", 3),
        ("add#3", "step", 6),
    ]


def test_result_async_times_out_and_the_run_goes_on(app: pgdurable.App, dsn: str) -> None:
    @app.workflow(name="async.slow")
    def slow() -> str:
        return "done"

    async def body() -> str:
        h = await slow.start_async()
        with pytest.raises(TimeoutError) as info:
            await h.result_async(timeout=0.2)
        assert str(info.value) == (
            f"run {h.run_id} ({h.workflow_id}) is still pending after 0.2 s; it goes on: "
            "call result_async() again to keep waiting"
        )
        assert await h.status_async() == "pending"
        with running_worker(app):
            return await h.result_async(timeout=15)

    assert run_async(app, body) == "done"


def test_result_async_raises_what_result_raises(app: pgdurable.App, dsn: str) -> None:
    @app.workflow(name="async.fails")
    def fails() -> None:
        raise pgdurable.NonRetryableError("card declined")

    @app.workflow(name="async.parked")
    def parked() -> Any:
        return pgdurable.wait_for_event("never")

    failed = fails.start()
    waiting = parked.start()
    pending = app.start("async.nobody", allow_unregistered=True)
    with running_worker(app):
        wait_status(dsn, failed.run_id, "failed")
        wait_status(dsn, waiting.run_id, "waiting")

    async def body() -> list[BaseException]:
        raised: list[BaseException] = []
        for h in (failed, waiting, pending):
            if h is not failed:
                assert await h.cancel_async() == "cancelled"
            with pytest.raises(pgdurable.PgDurableError) as info:
                await h.result_async(timeout=5)
            raised.append(info.value)
        return raised

    raised = run_async(app, body)
    assert isinstance(raised[0], pgdurable.WorkflowFailed)
    assert (raised[0].error_type, raised[0].message) == (
        "pgdurable.NonRetryableError",
        "card declined",
    )
    assert all(isinstance(e, pgdurable.RunCancelled) for e in raised[1:])
    for h, exc in zip((failed, waiting, pending), raised, strict=True):
        with pytest.raises(type(exc)) as sync:
            h.result(timeout=5)
        assert str(sync.value) == str(exc), "the sync and async messages differ"


def test_a_waiting_result_async_is_woken_when_the_run_is_cancelled(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.cancel_me")
    def parked() -> Any:
        return pgdurable.wait_for_event("never")

    async def body() -> BaseException | None:
        h = await parked.start_async()
        with running_worker(app):
            await until(
                "the run to wait",
                lambda: scalar(dsn, "select status = 'waiting' from pgdurable.runs"),
            )
            waiter = asyncio.ensure_future(h.result_async(timeout=30))
            await until("the waiter to listen", lambda: done_listeners(dsn) == 1)
            assert not waiter.done()
            assert await h.cancel_async() == "cancelled"
            try:
                await waiter
            except pgdurable.RunCancelled as exc:
                return exc
        return None

    exc = run_async(app, body)
    assert isinstance(exc, pgdurable.RunCancelled) and "was cancelled" in str(exc)


# --- operating a run ---------------------------------------------------------------------------


def test_cancel_resume_steps_and_status_async(app: pgdurable.App, dsn: str, tmp_path: Any) -> None:
    gate = tmp_path / "fixed"

    @app.step(retry=pgdurable.Retry(max_attempts=1))
    def fetch(order: str) -> str:
        return f"fetched {order}"

    @app.step(retry=pgdurable.Retry(max_attempts=1))
    def charge(order: str) -> str:
        if not gate.exists():
            raise RuntimeError("gateway down")
        return f"charged {order}"

    @app.workflow(name="async.order")
    def order(o: str) -> list[str]:
        return [fetch(o), charge(o)]

    async def body() -> None:
        h = await order.start_async("o-7")
        with running_worker(app):
            with pytest.raises(pgdurable.WorkflowFailed, match="gateway down"):
                await h.result_async(timeout=15)
            assert await h.status_async() == "failed"
            steps = await h.steps_async()
            assert [(s["step_key"], s["output"], s["error"] is None) for s in steps] == [
                ("fetch", "fetched o-7", True),
                ("charge", None, False),
            ]
            assert steps[1]["error"]["message"] == "gateway down"
            assert steps == h.steps(), "steps_async() and steps() differ"

            gate.touch()
            assert await h.resume_async() is None
            assert await h.result_async(timeout=15) == ["fetched o-7", "charged o-7"]
            assert await h.cancel_async() == "completed", "a finished run reports its status"
            with pytest.raises(pgdurable.InvalidState):
                await h.resume_async()

    run_async(app, body)


def test_handle_async_of_an_unknown_run_raises_run_not_found(app: pgdurable.App) -> None:
    async def body() -> None:
        with pytest.raises(pgdurable.RunNotFound, match="'no-such-run'"):
            await app.handle_async("no-such-run")

    run_async(app, body)


# --- events and messages -----------------------------------------------------------------------


def test_emit_event_async_and_send_async_wake_waiting_runs(app: pgdurable.App, dsn: str) -> None:
    @app.workflow(name="async.approval")
    def approval(order: str) -> Any:
        return pgdurable.wait_for_event(f"approved:{order}")

    @app.workflow(name="async.inbox")
    def inbox() -> list[Any]:
        return [pgdurable.recv("t"), pgdurable.recv("t")]

    async def body() -> list[Any]:
        a = await approval.start_async("o-1")
        b = await inbox.options(workflow_id="inbox-1").start_async()
        with running_worker(app):
            await until(
                "both runs to wait",
                lambda: scalar(
                    dsn, "select count(*) = 2 from pgdurable.runs where status = 'waiting'"
                ),
            )
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                # in a transaction that rolls back: neither exists
                await app.emit_event_async("approved:o-1", {"by": "mallory"}, conn=conn)
                await app.send_async("inbox-1", "lost", topic="t", conn=conn)
                await conn.rollback()
                await app.send_async(b.run_id, "first", topic="t", conn=conn)
                await conn.commit()
            await app.emit_event_async("approved:o-1", {"by": "ann"})
            await app.send_async("inbox-1", {"n": 2}, topic="t")
            return [await a.result_async(timeout=15), await b.result_async(timeout=15)]

    assert run_async(app, body) == [{"by": "ann"}, ["first", {"n": 2}]]
    assert query(dsn, "select count(*) from pgdurable.events where name = 'approved:o-1'") == [(1,)]


# --- many waiters on one event loop ------------------------------------------------------------


def test_fifty_concurrent_result_async_waits_share_one_listener_and_all_complete(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.fan")
    def fan(i: int) -> int:
        pgdurable.wait_for_event("go")
        return i * i

    async def body() -> list[int]:
        handles = [await fan.start_async(i) for i in range(50)]
        with running_worker(app, concurrency=8):
            waits = asyncio.gather(*(h.result_async(timeout=60) for h in handles))
            await until(
                "all 50 runs to wait",
                lambda: scalar(
                    dsn, "select count(*) = 50 from pgdurable.runs where status = 'waiting'"
                ),
                timeout=30,
            )
            await until("the result listener", lambda: done_listeners(dsn) >= 1)
            assert done_listeners(dsn) == 1, "the waits of one event loop share one LISTEN"
            assert not waits.done()
            await app.emit_event_async("go")
            return list(await waits)

    assert run_async(app, body) == [i * i for i in range(50)]


def test_result_async_survives_its_listener_losing_the_connection(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.relisten")
    def flow() -> str:
        pgdurable.wait_for_event("go")
        return "ok"

    async def body() -> str:
        h = await flow.start_async()
        with running_worker(app):
            waiter = asyncio.ensure_future(h.result_async(timeout=60))
            await until("the result listener", lambda: done_listeners(dsn) == 1)
            killed = scalar(
                dsn,
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                "datname = current_database() and query ilike 'listen pgdurable_done%%'",
            )
            assert killed == 1
            await until("the listener to come back", lambda: done_listeners(dsn) == 1)
            await app.emit_event_async("go")
            return await waiter

    assert run_async(app, body) == "ok"


# --- the same validation as the sync calls -----------------------------------------------------


def _bad_calls(app: pgdurable.App, wf: Any) -> list[tuple[str, Any, Any]]:
    """(what, sync call, async call) pairs that must fail alike."""
    return [
        (
            "NUL in workflow_id",
            lambda: wf.options(workflow_id="a\x00b").start(),
            lambda: wf.options(workflow_id="a\x00b").start_async(),
        ),
        ("non-JSON argument", lambda: wf.start({1, 2}), lambda: wf.start_async({1, 2})),
        ("NaN argument", lambda: wf.start(float("nan")), lambda: wf.start_async(float("nan"))),
        (
            "unregistered name",
            lambda: app.start("async.typo"),
            lambda: app.start_async("async.typo"),
        ),
        (
            "unknown option",
            lambda: app.start("async.bad", bogus=1),
            lambda: app.start_async("async.bad", bogus=1),
        ),
        (
            "negative delay",
            lambda: app.start("async.bad", delay=-1),
            lambda: app.start_async("async.bad", delay=-1),
        ),
        (
            "NUL in event name",
            lambda: app.emit_event("a\x00"),
            lambda: app.emit_event_async("a\x00"),
        ),
        ("empty event name", lambda: app.emit_event(""), lambda: app.emit_event_async("")),
        (
            "non-JSON payload",
            lambda: app.emit_event("e", object()),
            lambda: app.emit_event_async("e", object()),
        ),
        (
            "payload over the limits",
            lambda: app.send("x", "y" * 2048),
            lambda: app.send_async("x", "y" * 2048),
        ),
        (
            "NUL in topic",
            lambda: app.send("x", 1, topic="t\x00"),
            lambda: app.send_async("x", 1, topic="t\x00"),
        ),
        ("unknown target", lambda: app.send("nobody", 1), lambda: app.send_async("nobody", 1)),
        ("NUL in handle key", lambda: app.handle("a\x00"), lambda: app.handle_async("a\x00")),
        (
            "endless result timeout",
            lambda: app.handle("async-bad-1").result(timeout=float("inf")),
            lambda: app.handle("async-bad-1").result_async(timeout=float("inf")),
        ),
        (
            "negative result timeout",
            lambda: app.handle("async-bad-1").result(timeout=-1),
            lambda: app.handle("async-bad-1").result_async(timeout=-1),
        ),
    ]


def test_async_calls_reject_bad_input_exactly_like_the_sync_ones(dsn: str) -> None:
    limits = pgdurable.Limits(max_bytes=1024)
    with pgdurable.App(dsn, lease=2.0, limits=limits) as app:

        @app.workflow(name="async.bad")
        def bad(*args: Any) -> None:
            return None

        bad.options(workflow_id="async-bad-1").start()
        before = run_count(dsn)
        for what, sync_call, async_call in _bad_calls(app, bad):
            with pytest.raises(Exception) as sync:
                sync_call()

            async def body(call: Any = async_call) -> None:
                await call()

            with pytest.raises(Exception) as asyn:
                run_async(app, body)
            assert type(asyn.value) is type(sync.value), what
            assert str(asyn.value).replace("_async", "") == str(sync.value), what
        assert run_count(dsn) == before, "a rejected call wrote a run"


def test_a_connection_of_the_wrong_kind_is_refused_with_a_type_error(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.kind")
    def flow() -> None:
        return None

    with psycopg.connect(dsn) as sync_conn:

        async def body() -> None:
            for call in (
                lambda: flow.options(conn=sync_conn).start_async(),
                lambda: app.start_async("async.kind", conn=sync_conn),  # type: ignore[arg-type]
                lambda: app.emit_event_async("e", conn=sync_conn),  # type: ignore[arg-type]
                lambda: app.send_async("x", conn=sync_conn),  # type: ignore[arg-type]
            ):
                with pytest.raises(TypeError, match=r"got a sync psycopg\.Connection as conn="):
                    await call()
            async with await psycopg.AsyncConnection.connect(dsn) as aconn:
                for sync_call in (
                    lambda: flow.options(conn=aconn).start(),
                    lambda: app.start("async.kind", conn=aconn),  # type: ignore[arg-type]
                    lambda: app.emit_event("e", conn=aconn),  # type: ignore[arg-type]
                    lambda: app.send("x", conn=aconn),  # type: ignore[arg-type]
                ):
                    with pytest.raises(TypeError, match=r"_async\(\) to use it"):
                        sync_call()
            with pytest.raises(TypeError, match=r"takes a psycopg\.AsyncConnection"):
                await flow.options(conn="dsn=...").start_async()  # type: ignore[arg-type]

        run_async(app, body)
    assert run_count(dsn) == 0


def test_async_calls_in_sync_workflow_code_are_refused_and_inside_a_step_allowed(
    app: pgdurable.App, dsn: str
) -> None:
    @app.step()
    def notify(order: str) -> str:
        # inside a step an async call is a plain call, as emit_event() would be
        asyncio.run(app.emit_event_async(f"noted:{order}", order))
        return "noted"

    @app.workflow(name="async.inside")
    def inside(order: str) -> str:
        notify(order)
        asyncio.run(app.emit_event_async("not-recorded"))
        return "unreachable"

    h = inside.start("o-1")
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as info:
        h.result(timeout=15)
    assert info.value.error_type == "TypeError"
    assert info.value.message == (
        "app.emit_event_async() is the async form, and this workflow is a plain (sync) one: "
        "call app.emit_event() instead"
    )
    assert query(dsn, "select name from pgdurable.events order by name") == [("noted:o-1",)]


# --- the App's async pool across event loops ---------------------------------------------------


def test_the_async_pool_follows_the_event_loop_and_close_is_safe_in_every_order(
    app: pgdurable.App, dsn: str
) -> None:
    @app.workflow(name="async.loops")
    def flow(x: int) -> int:
        return x

    app.close()  # nothing async opened: a no-op
    h = flow.start(1)

    # a loop that ends without close_async(): the next loop opens a pool of its own
    assert asyncio.run(h.status_async()) == "pending"
    assert asyncio.run(h.status_async()) == "pending"
    app.close()  # from sync code after the loop ended

    async def close_from_async_code() -> str:
        status = await h.status_async()
        app.close()  # in async code: finishes closing on the loop, without blocking it
        return status

    assert asyncio.run(close_from_async_code()) == "pending"
    assert run_async(app, h.status_async) == "pending"
    assert h.status() == "pending", "the sync side works after close_async()"

    # a loop still running in another thread owns the async side: a second one is refused
    started, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    async def hold_the_side() -> None:
        outcome.append(await h.status_async())
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)

    thread = threading.Thread(target=asyncio.run, args=(hold_the_side(),))
    thread.start()
    try:
        assert started.wait(15)
        with pytest.raises(RuntimeError, match="one App per event loop"):
            asyncio.run(h.status_async())
        app.close()  # closes the async side on its own loop, from this thread
    finally:
        release.set()
        thread.join(15)
    assert outcome == ["pending"]
    assert run_async(app, h.status_async) == "pending"


def test_a_loop_that_ends_without_close_async_closes_the_pool_and_does_not_hang(
    app: pgdurable.App, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    @app.workflow(name="async.burst")
    def flow() -> None:
        return None

    # The pool logs a connection attempt the teardown cancelled, with the exception as an
    # argument; a captured record would keep that attempt's connection alive for the test.
    caplog.set_level(logging.ERROR, logger="psycopg.pool")

    h = flow.start()
    app.close()

    def sessions() -> int:
        return int(
            scalar(
                dsn,
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and pid <> pg_backend_pid()",
            )
        )

    async def burst() -> list[str]:
        # grows the pool: loop teardown may catch its workers mid-connect
        return await asyncio.gather(*(h.status_async() for _ in range(30)))

    for _ in range(5):
        assert asyncio.run(burst()) == ["pending"] * 30
        wait_until("the async pool's connections to close with their loop", lambda: sessions() == 0)


# --- the two surfaces cannot drift -------------------------------------------------------------

# Public methods with no twin, and why. A new sync method must either get an _async twin or be
# listed here with its reason.
NO_TWIN = {
    "App": {
        "workflow": "a decorator, not I/O",
        "step": "a decorator, not I/O",
        "transaction": "a decorator, not I/O",
        "worker": "builds a Worker (no I/O); it runs async workflows on its own event loop",
        "connect": "returns a sync connection by definition",
        "init_schema": "an administrative call (pgdurable init)",
        "check_schema": "an administrative call (pgdurable check)",
        "ensure_pool_size": "sizes the sync pool a worker uses",
        "connection_lost": "the sync pool's recovery",
        "use_database": "no I/O of its own: points the App elsewhere, closing both pools",
        "use_pooler": "no I/O of its own: sets the pooler mode (docs/poolers.md), closing pools",
        "listening": "returns a sync LISTEN connection; async waits share one per event loop",
        "async_connection": "async by definition",
        "async_pool": "async by definition",
        "queue": "a declaration, not I/O (workers apply it at start)",
        "configure_queues": "an administrative call, like init_schema (workers make it at start)",
        "schedule": "a declaration, not I/O (workers apply it at start)",
        "configure_schedules": "an administrative call, like init_schema (workers do it at start)",
        "retention": "a declaration, not I/O (workers apply it at start)",
        "watch_done": "async by definition",
        "watch_stream": "async by definition",
    },
    "Workflow": {
        "options": "binds options, no I/O",
    },
    "WorkflowCall": {},
    "RunHandle": {},
}

CLASSES: dict[str, type] = {
    "App": pgdurable.App,
    "Workflow": pgdurable.Workflow,
    "WorkflowCall": WorkflowCall,
    "RunHandle": RunHandle,
}


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.isfunction(member)
    }


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_every_sync_operation_has_an_async_twin_with_the_same_parameters(cls_name: str) -> None:
    cls = CLASSES[cls_name]
    methods = _public_methods(cls)
    asyncs = {m for m in methods if m.endswith("_async")}
    syncs = methods - asyncs - set(NO_TWIN[cls_name])
    assert syncs, f"{cls_name} has no operations to compare"
    assert {f"{m}_async" for m in syncs} == asyncs, (
        f"{cls_name}: every sync operation needs an _async twin and every twin a sync original "
        "(or a reason in NO_TWIN)"
    )
    for name in sorted(syncs):
        sync = inspect.signature(getattr(cls, name))
        twin_fn = getattr(cls, f"{name}_async")
        twin = inspect.signature(twin_fn)
        returns = str(sync.return_annotation)
        if returns.startswith("Iterator["):
            # an iterator's twin is an async generator (aclose() disconnects), returned, not
            # awaited, like the original
            async_returns = f"AsyncGenerator[{returns.removeprefix('Iterator[')[:-1]}, None]"
            assert str(twin.return_annotation) == async_returns, f"{cls_name}.{name} returns"
        else:
            assert inspect.iscoroutinefunction(twin_fn), f"{cls_name}.{name}_async is not async"
            assert str(twin.return_annotation) == returns, f"{cls_name}.{name} returns"
        assert list(sync.parameters) == list(twin.parameters), f"{cls_name}.{name}"
        for param, other in zip(sync.parameters.values(), twin.parameters.values(), strict=True):
            assert (param.kind, param.default) == (other.kind, other.default), (
                f"{cls_name}.{name}({param.name})"
            )
            if param.name == "conn":
                assert "AsyncConnection" in str(other.annotation), f"{cls_name}.{name}_async conn"
            else:
                assert param.annotation == other.annotation, f"{cls_name}.{name}({param.name})"
