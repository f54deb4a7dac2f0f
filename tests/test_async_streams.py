"""The async stream reader and start_many_async against a real PostgreSQL.

What a user checks: ``async for value in handle.read_stream_async(key)`` gives what
``read_stream`` gives (resumable from an offset after a disconnect, woken by NOTIFY rather than
its poll, ending on close and on the run's end, TimeoutError when idle, RunNotFound for an
unknown run); many readers on one event loop share one LISTEN session and a small pool; and
``await wf.start_many_async(...)`` starts its runs in the caller's async transaction, so a
rollback leaves none. Runs are executed by a sync worker in a thread; each test drives its own
event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.async_support import run_async
from apps.async_support import until as _until
from apps.support import running_worker, scalar, wait_for_file


async def until(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The shared wait, with this file's 10 s deadline (values must arrive long before the
    60 s poll would fetch them)."""
    return await _until(what, probe, timeout)


def sessions(dsn: str, like: str) -> int:
    """Sessions of the test database whose last statement matches ``like``."""
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid() and query ilike %s",
            (like,),
        )
    )


def have_read(dsn: str) -> int:
    """Sessions whose last statement was the SDK's stream read (a reader has read once)."""
    return sessions(dsn, "%pgdurable.read_stream(r.id%")


class Collect:
    """An async reader as a task, recording what it yields and how it ended."""

    def __init__(self, values: AsyncIterator[Any]) -> None:
        self.values: list[Any] = []
        self.ended: BaseException | str | None = None
        self.task = asyncio.ensure_future(self._run(values))

    async def _run(self, values: AsyncIterator[Any]) -> None:
        try:
            async for value in values:
                self.values.append(value)
            self.ended = "end"
        except Exception as exc:
            self.ended = exc


def test_a_reader_disconnects_and_resumes_from_its_offset(app: pgdurable.App) -> None:
    @app.workflow(name="ast.count")
    def count(n: int) -> int:
        for i in range(n):
            pgdurable.write_stream("numbers", i)
        pgdurable.close_stream("numbers")
        return n

    with running_worker(app):
        handle = count.start(10)
        assert handle.result(timeout=15) == 10

    async def body() -> None:
        first = handle.read_stream_async("numbers")
        got = [await first.__anext__() for _ in range(4)]
        assert got == [0, 1, 2, 3]
        await first.aclose()  # the client disconnects
        rest = [v async for v in handle.read_stream_async("numbers", start=len(got))]
        assert rest == [4, 5, 6, 7, 8, 9]
        assert [v async for v in handle.read_stream_async("numbers", start=9)] == [9]
        assert [v async for v in handle.read_stream_async("numbers", start=1000)] == []
        assert [v async for v in handle.read_stream_async("no such key")] == []
        # the same values the sync reader gives
        assert [v async for v in handle.read_stream_async("numbers")] == list(
            handle.read_stream("numbers")
        )
        unknown = pgdurable.RunHandle(app, uuid.uuid4(), "nobody", "ast.count")
        with pytest.raises(pgdurable.RunNotFound, match="does not exist"):
            await unknown.read_stream_async("numbers").__anext__()

    run_async(app, body)
    with pytest.raises(ValueError, match="start must be an offset"):
        handle.read_stream_async("numbers", start=-1)
    with pytest.raises(ValueError, match=r"read_stream_async\(\) poll_interval"):
        handle.read_stream_async("numbers", poll_interval=0)


def test_a_reader_is_woken_by_notify_and_ends_when_the_stream_closes(
    app: pgdurable.App, tmp_path: Path
) -> None:
    @app.step()
    def generate(gates: str) -> None:
        for i in range(3):
            wait_for_file(Path(gates) / str(i))
            pgdurable.write_stream("tokens", f"token {i}")
        pgdurable.close_stream("tokens")

    @app.workflow(name="ast.live")
    def live(gates: str) -> str:
        generate(gates)
        # the stream is closed while the run goes on: readers end anyway
        return str(pgdurable.wait_for_event(f"ast.live.done:{gates}"))

    async def body() -> None:
        handle = await live.start_async(str(tmp_path))
        # a poll every 60 s: a value seen within 10 s came by NOTIFY
        reader = Collect(handle.read_stream_async("tokens", poll_interval=60))
        await until("the reader's first read", lambda: have_read(app.dsn) >= 1)
        for i in range(3):
            (tmp_path / str(i)).touch()
            await until(
                f"token {i} at the reader", lambda i=i: len(reader.values) == i + 1, timeout=10.0
            )
        await until("the reader to end", lambda: reader.task.done())
        assert reader.ended == "end"
        assert reader.values == ["token 0", "token 1", "token 2"]
        # the reader ended at the close, not at the run's end: the run goes on to its wait
        status = "select status from pgdurable.runs where id = %s"
        await until(
            "the run to wait for its event",
            lambda: scalar(app.dsn, status, (handle.run_id,)) == "waiting",
        )
        await app.emit_event_async(f"ast.live.done:{tmp_path}", "bye")
        assert await handle.result_async(timeout=15) == "bye"

    with running_worker(app):
        run_async(app, body)


def test_a_reader_ends_when_the_run_ends(app: pgdurable.App) -> None:
    @app.workflow(name="ast.ends")
    def ends(tag: str) -> str:
        pgdurable.write_stream("log", "waiting")
        outcome = pgdurable.wait_for_event(f"ast.ends:{tag}")
        pgdurable.write_stream("log", f"got {outcome}")
        if outcome == "fail":
            raise RuntimeError("told to fail")
        return str(outcome)

    async def body() -> dict[str, Collect]:
        runs = {tag: await ends.start_async(tag) for tag in ("c", "f", "x")}
        live = {
            tag: Collect(h.read_stream_async("log", poll_interval=60)) for tag, h in runs.items()
        }
        for reader in live.values():
            await until(
                "the reader's first value", lambda r=reader: r.values == ["waiting"], timeout=10.0
            )
        await app.emit_event_async("ast.ends:c", "done")
        await app.emit_event_async("ast.ends:f", "fail")
        assert await runs["x"].cancel_async() == "cancelled"
        # woken by the run's end, not by the 60 s poll
        await until("every reader to end", lambda: all(r.task.done() for r in live.values()))
        assert await runs["f"].status_async() == "failed"
        return live

    with running_worker(app):
        live = run_async(app, body)
    assert {tag: r.ended for tag, r in live.items()} == {"c": "end", "f": "end", "x": "end"}
    assert live["c"].values == ["waiting", "got done"]
    assert live["f"].values == ["waiting", "got fail"]
    assert live["x"].values == ["waiting"]


def test_an_idle_async_reader_raises_timeout_error_like_the_sync_one(app: pgdurable.App) -> None:
    @app.workflow(name="ast.idle")
    def idle() -> Any:
        pgdurable.write_stream("log", "one")
        return pgdurable.wait_for_event("ast.idle.never")

    async def body() -> tuple[list[Any], str]:
        handle = await idle.start_async()
        with running_worker(app):
            await until("the run to wait", lambda: handle.status() == "waiting")
        got: list[Any] = []
        with pytest.raises(TimeoutError) as info:
            async for value in handle.read_stream_async("log", timeout=0.3):
                got.append(value)
        with pytest.raises(TimeoutError):
            await handle.read_stream_async("log", start=1, timeout=0.2).__anext__()
        sync_got: list[Any] = []
        with pytest.raises(TimeoutError) as sync:
            for value in handle.read_stream("log", timeout=0.3):
                sync_got.append(value)
        assert str(info.value) == str(sync.value)
        assert got == sync_got
        return got, str(info.value)

    got, message = run_async(app, body)
    assert got == ["one"]
    assert message.startswith("no value on stream 'log' of run ")
    assert message.endswith(
        "for 0.3 s (the run is waiting); read again from offset 1 to keep waiting"
    )


def test_many_readers_on_one_loop_share_one_listener(app: pgdurable.App, tmp_path: Path) -> None:
    @app.step()
    def produce(gates: str) -> None:
        for i in range(3):
            wait_for_file(Path(gates) / str(i))
            pgdurable.write_stream("ticks", i)

    @app.workflow(name="ast.many")
    def many(gates: str) -> str:
        produce(gates)
        return "done"

    async def body() -> list[Collect]:
        handle = await many.start_async(str(tmp_path))
        readers = [Collect(handle.read_stream_async("ticks", poll_interval=60)) for _ in range(40)]
        await until("the readers' first reads", lambda: have_read(app.dsn) >= 1)
        for i in range(3):
            (tmp_path / str(i)).touch()
            await until(
                f"tick {i} at every reader", lambda i=i: all(len(r.values) > i for r in readers)
            )
        await until("every reader to end", lambda: all(r.task.done() for r in readers))
        # one LISTEN session for the loop, not one per reader; reads share the async pool
        assert sessions(app.dsn, "listen pgdurable_done%") == 1
        return readers

    with running_worker(app):
        readers = run_async(app, body)
    assert [(r.ended, r.values) for r in readers] == [("end", [0, 1, 2])] * 40


def test_start_many_async_in_the_callers_transaction(app: pgdurable.App, dsn: str) -> None:
    @app.workflow(name="ast.double")
    def double(x: int) -> int:
        return 2 * x

    def run_count() -> int:
        return int(scalar(dsn, "select count(*) from pgdurable.runs"))

    async def body() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await double.start_many_async([(1,), (2,)], workflow_ids=["a", "b"], conn=conn)
            await conn.rollback()
            assert run_count() == 0, "a start_many in a rolled-back transaction left runs"
            kept = await double.start_many_async(
                [(1,), (2,), (3,)], workflow_ids=["a", "b", "c"], conn=conn, priority=5
            )
            assert run_count() == 0, "visible before the caller committed"
            await conn.commit()
        assert [h.workflow_id for h in kept] == ["a", "b", "c"]
        pooled = await double.start_many_async([(10,)])
        with pytest.raises(ValueError) as info:
            await double.start_many_async([(1,)], workflow_ids=["x", "y"])
        with pytest.raises(ValueError) as sync:
            double.start_many([(1,)], workflow_ids=["x", "y"])
        assert str(info.value) == str(sync.value) == "start_many got 1 calls but 2 workflow_ids"
        with (
            psycopg.connect(dsn) as sync_conn,
            pytest.raises(TypeError, match=r"got a sync psycopg\.Connection as conn="),
        ):
            await double.start_many_async([(1,)], conn=sync_conn)  # type: ignore[arg-type]
        with running_worker(app):
            return [await h.result_async(timeout=15) for h in (*kept, *pooled)]

    assert run_async(app, body) == [2, 4, 6, 20]
    assert run_count() == 4
    assert scalar(dsn, "select count(*) from pgdurable.runs where priority = 5") == 3
