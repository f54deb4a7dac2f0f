"""The two drivers that carry out a plan's requests (_ops.py): on a sync Connection, or on an
AsyncConnection on an event loop. They are the only code that differs between sync and async
runs, and they are kept line for line alike (tests/test_drivers.py checks they cover the same
requests). Everything a run decides lives in the plans, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import _async_queries as aq
from ._db import call_sql
from ._errors import ConcurrentOperations, translate
from ._ops import Atomic, Blocking, ConnectionLost, Invoke, Pause, Sql
from ._queries import Q

_FAILED = psycopg.pq.TransactionStatus.INERROR


def _not_async(fn: Callable[..., Any], what: str) -> TypeError:
    return TypeError(
        f"{what} is an async function but this workflow is a plain (sync) one: make the "
        "workflow `async def` too and `await` the call, or make the function a plain def"
    )


class SyncDriver:
    """Carries out plans on a sync Connection, in the calling thread."""

    is_async = False

    def __init__(
        self, conn: psycopg.Connection[Any], on_lost: Callable[[], None] | None = None
    ) -> None:
        self.conn = conn
        self.on_lost = on_lost
        # inside an Atomic: where the pipeline that carries its last statement and COMMIT goes
        self._tail: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The run's connection (a sync run holds one for its whole attempt)."""
        yield self.conn

    def run(self, plan: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value
            error = value = None
            try:
                value = self._perform(op)
            except BaseException as exc:  # handed to the plan, which decides
                error = exc

    def _perform(self, op: Any) -> Any:
        if type(op) is Sql:
            if op.commits and self._tail is not None:
                # queued in a pipeline the transaction's COMMIT joins: one round trip for both,
                # and an error of either surfaces when the Atomic ends
                self._tail.enter_context(self.conn.pipeline())
                self.conn.execute(Q[op.name], op.params, prepare=True)
                return None
            cur = call_sql(self.conn, op.name, op.params)
            if op.fetch == "none":
                return None
            return cur.fetchone() if op.fetch == "one" else cur.fetchall()
        if type(op) is Invoke:
            if inspect.iscoroutinefunction(op.fn):
                raise _not_async(op.fn, op.what)
            if op.with_conn:
                result = op.fn(self.conn, *op.args, **op.kwargs)
            else:
                result = op.fn(*op.args, **op.kwargs)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise _not_async(op.fn, op.what)
            return result
        if type(op) is Atomic:
            if self._tail is not None:  # nested: a savepoint
                with self.conn.transaction():
                    return self.run(op.plan)
            try:
                with contextlib.ExitStack() as tail:
                    self._tail = tail
                    with self.conn.transaction():
                        value = self.run(op.plan)
                return value
            except psycopg.Error as exc:
                if not self.conn.broken and self.conn.info.transaction_status == _FAILED:
                    # the pipelined statement failed, so the COMMIT after it was skipped
                    with contextlib.suppress(psycopg.Error):
                        self.conn.execute(Q["rollback"])
                mapped = translate(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            finally:
                self._tail = None
        if type(op) is Pause:
            time.sleep(op.seconds)
            return None
        if type(op) is Blocking:
            return op.fn(*op.args)
        if type(op) is ConnectionLost:
            if self.on_lost is not None:
                self.on_lost()
            return None
        raise TypeError(f"a plan yielded {op!r}, which is not a request this driver knows")


class AsyncDriver:
    """Carries out plans in the run's task on the event loop. A run holds a connection from
    ``pool`` only while a statement or a transaction step runs, never while its workflow or a
    step awaits something else (an async run waiting 30 s on an API holds no connection).
    Plain (sync) steps and handlers run in a thread, so they never block the loop."""

    is_async = True

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | Any,
        on_lost: Callable[[], Awaitable[None]] | None = None,
        checkout_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.on_lost = on_lost
        self.checkout_timeout = checkout_timeout
        self.conn: psycopg.AsyncConnection[Any] | None = None  # held inside a transaction only
        self._tail: contextlib.AsyncExitStack | None = None  # as in SyncDriver
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection of the open transaction step, else one from the pool for the block."""
        if self.conn is not None:
            yield self.conn
            return
        async with self.pool.connection(timeout=self.checkout_timeout) as conn:
            yield conn

    async def run(self, plan: Generator[Any, Any, Any]) -> Any:
        task = asyncio.current_task()
        if self._depth and task is not self._owner:
            plan.close()
            raise ConcurrentOperations(
                "two durable operations of one run were awaited at the same time (with "
                "asyncio.gather, create_task or a TaskGroup): a run records its operations "
                "in order, so await them one at a time; for parallel work start child "
                "workflows and await pgdurable.gather_async(...) on their handles"
            )
        self._owner = task
        self._depth += 1
        try:
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    op = plan.send(value) if error is None else plan.throw(error)
                except StopIteration as done:
                    return done.value
                error = value = None
                try:
                    value = await self._perform(op)
                except BaseException as exc:  # handed to the plan, which decides
                    error = exc
        finally:
            self._depth -= 1

    async def _perform(self, op: Any) -> Any:
        if type(op) is Sql:
            if op.commits and self._tail is not None and self.conn is not None:
                await self._tail.enter_async_context(self.conn.pipeline())
                await self.conn.execute(Q[op.name], op.params, prepare=True)
                return None
            async with self.connection() as conn:
                cur = await aq.call_sql(conn, op.name, op.params)
                if op.fetch == "none":
                    return None
                return await (cur.fetchone() if op.fetch == "one" else cur.fetchall())
        if type(op) is Invoke:
            if op.with_conn:
                if self.conn is None or not inspect.iscoroutinefunction(op.fn):
                    raise TypeError(
                        f"{op.what} is a plain function but its workflow is async: make it "
                        "`async def` (it receives a psycopg.AsyncConnection in the transaction)"
                    )
                result = op.fn(self.conn, *op.args, **op.kwargs)
            elif inspect.iscoroutinefunction(op.fn):
                result = op.fn(*op.args, **op.kwargs)
            else:
                result = await asyncio.to_thread(op.fn, *op.args, **op.kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        if type(op) is Atomic:
            if self.conn is not None:  # already inside this run's transaction
                return await self.run(op.plan)
            async with self.pool.connection(timeout=self.checkout_timeout) as conn:
                self.conn = conn
                try:
                    async with contextlib.AsyncExitStack() as tail:
                        self._tail = tail
                        async with conn.transaction():
                            value = await self.run(op.plan)
                    return value
                except psycopg.Error as exc:
                    if not conn.broken and conn.info.transaction_status == _FAILED:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute(Q["rollback"])
                    mapped = translate(exc)
                    if mapped is None:
                        raise
                    raise mapped from exc
                finally:
                    self.conn = None
                    self._tail = None
        if type(op) is Pause:
            await asyncio.sleep(op.seconds)
            return None
        if type(op) is Blocking:
            return await asyncio.to_thread(op.fn, *op.args)
        if type(op) is ConnectionLost:
            if self.on_lost is not None:
                await self.on_lost()
            return None
        raise TypeError(f"a plan yielded {op!r}, which is not a request this driver knows")
