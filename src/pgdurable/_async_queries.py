"""The database floor, async flavour: named engine calls on a psycopg ``AsyncConnection``, the
check that a caller's ``conn=`` is of the kind the call can use, and what a Runtime holds on
the event loop its async calls run on (a pool, one shared LISTEN for run ends).

Error translation and the statements themselves are shared with the sync floor (_errors,
_queries); only the ``await`` differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ._db import describe
from ._errors import translate
from ._liveness import quietly_alive
from ._queries import Q


async def call_sql(
    conn: psycopg.AsyncConnection[Any], name: str, params: Sequence[Any] | None = None
) -> Any:
    """Execute a named query, translating the engine's SQLSTATEs into pgdurable exceptions."""
    try:
        return await conn.execute(Q[name], params, prepare=True)
    except psycopg.Error as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def sync_conn(conn: Any, call: str) -> psycopg.Connection[Any] | None:
    """``conn`` given to the sync ``call``: None or a Connection, never an AsyncConnection (its
    methods would return coroutines nobody awaits, and the run would silently not start)."""
    if isinstance(conn, psycopg.AsyncConnection):
        raise TypeError(
            f"{call}() got a psycopg.AsyncConnection as conn=: await {call}_async() to use it, "
            "or pass a psycopg.Connection"
        )
    result: psycopg.Connection[Any] | None = conn
    return result


def async_conn(conn: Any, call: str) -> psycopg.AsyncConnection[Any] | None:
    """``conn`` given to the async ``call``: None or an AsyncConnection."""
    if conn is None or isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise TypeError(
            f"{call}() got a sync psycopg.Connection as conn=: call {call.removesuffix('_async')}"
            "() with it, or pass a psycopg.AsyncConnection"
        )
    raise TypeError(f"{call}() takes a psycopg.AsyncConnection as conn=, got {type(conn).__name__}")


log = logging.getLogger("pgdurable.client")

# close() called from async code schedules the async side's close; keep the task alive till done
closing: set[asyncio.Task[None]] = set()


class AsyncSide:
    """What the async calls of one Runtime use on one event loop: a pool, and one LISTEN
    connection that wakes every ``result_async()`` waiter and ``read_stream_async()`` reader
    (not a connection per waiter)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dsn = ""
        # where the LISTEN goes; None behind a transaction pooler without a listen_dsn (waiters
        # then only poll)
        self.listen_dsn: str | None = None
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self.opening: asyncio.Task[None] | None = None
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.listening = asyncio.Event()
        self.listener: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None
        self.connections: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

    def wake_all(self) -> None:
        for events in self.waiters.values():
            for event in events:
                event.set()

    async def listen(self) -> None:
        backoff = 1.0
        while True:
            try:
                assert self.listen_dsn is not None
                conn = await psycopg.AsyncConnection.connect(self.listen_dsn, autocommit=True)
                async with conn:
                    await conn.execute(Q["listen_stream"])
                    # done last: pg_stat_activity shows this session as the run-end listener
                    await conn.execute(Q["listen_done"])
                    self.listening.set()
                    backoff = 1.0
                    async for note in conn.notifies():
                        for event in self.waiters.get(note.payload, ()):
                            event.set()
            except Exception as exc:  # any failure: reconnect after a pause; waiters poll meanwhile
                log.warning(
                    "the async listener (result_async, read_stream_async) lost its connection "
                    "(%s); waiters poll until it is back",
                    describe(exc),
                )
            self.listening.clear()
            # Each waiter re-reads its run now: an end notified while we were away is not lost.
            self.wake_all()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    @contextlib.asynccontextmanager
    async def watch(
        self, run_id: uuid.UUID, ready_within: float, *payloads: str
    ) -> AsyncIterator[asyncio.Event]:
        """An event set when the run may have ended (NOTIFY pgdurable_done), on a notification
        with one of ``payloads`` (a stream's ``<run id>:<key>`` on pgdurable_stream, a payload
        no run id can be) or when the listener reconnected: the caller clears it, re-reads,
        and waits on it again. Waits up to ``ready_within`` s for the LISTEN to be in place
        before the caller's first read; a listener that cannot connect leaves the caller
        polling."""
        keys = (str(run_id), *payloads)
        event = asyncio.Event()
        for key in keys:
            self.waiters.setdefault(key, set()).add(event)
        try:
            if self.listen_dsn is None:
                ready_within = 0.0  # no LISTEN to wait for: the caller polls
            elif self.listener is None or self.listener.done():
                self.listener = self.loop.create_task(self.listen())
            if not self.listening.is_set() and ready_within > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.listening.wait(), ready_within)
            yield event
        finally:
            for key in keys:
                events = self.waiters.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self.waiters[key]

    async def open(
        self, dsn: str, max_size: int, kwargs: dict[str, Any], listen_dsn: str | None
    ) -> None:
        """Open the pool on ``dsn`` with connection ``kwargs``; LISTEN on ``listen_dsn``."""
        self.dsn, self.listen_dsn = dsn, listen_dsn
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            kwargs=kwargs,
            name="pgdurable-async",
            open=False,
            # as for the sync pool: a connection the server dropped is replaced at checkout
            check=_check_connection,
            configure=self._opened,
        )
        await pool.open()
        self.pool = pool
        self.keeper = self.loop.create_task(self._keep(pool))

    async def _opened(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.connections.add(conn)

    async def _keep(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        """Lives as long as the side; cancelled (by close(), or by asyncio.run ending the loop)
        it closes the listener and the pool. A loop ending without close_async() cancels the
        pool's workers too, and they must still be stopped: one cancelled while connecting
        survives it and would hang the loop's teardown. pool.close() stops them, but then gives
        up before closing the idle connections, so those are closed here."""
        try:
            await self.loop.create_future()
        finally:
            if self.listener is not None:
                self.listener.cancel()
                await asyncio.wait([self.listener])
            self.wake_all()
            try:
                await pool.close(timeout=2.0)
            finally:
                for conn in list(self.connections):
                    await conn.close()

    async def close(self) -> None:
        if self.opening is not None:
            await asyncio.wait([self.opening])
        if self.keeper is not None:
            self.keeper.cancel()
            await asyncio.wait([self.keeper])


async def _check_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's checkout check: the ping only for a connection the server has written to."""
    if not quietly_alive(conn):
        await AsyncConnectionPool.check_connection(conn)
