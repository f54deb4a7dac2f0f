"""The worker's async lane: runs of async workflows, many at once as tasks on one event loop.

It lives in a thread of its own (its own loop, its own AsyncConnectionPool) beside the thread
pool that runs sync workflows, and shares the worker's stop flag, wake-ups (the listener's
NOTIFY), registry heartbeat and lease heartbeats. A run holds a pooled connection only while a
statement or transaction step of it runs, so the pool is much smaller than the lane's
concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import _async_queries as aq
from . import _telemetry
from ._db import describe, is_connection_error
from ._executor import execute_async

if TYPE_CHECKING:
    from ._leases import Held
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.worker")

CLAIM_CHECKOUT_TIMEOUT = 3.0


class AsyncLane:
    """Claims runs of ``workflows`` (the async ones) and executes up to ``concurrency`` of them
    at once on one event loop, with at most ``connections`` database connections."""

    def __init__(
        self,
        app: Runtime,
        workflows: list[str],
        queues: list[str],
        concurrency: int,
        connections: int,
        stop: threading.Event,
        poll_interval: float,
    ) -> None:
        self.app = app
        self.workflows = workflows
        self.queues = queues
        self.concurrency = concurrency
        self.connections = connections
        self.stop = stop
        self.poll_interval = poll_interval
        self.active = 0
        self.completed = 0
        self.failed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.ready = threading.Event()

    def wake(self) -> None:
        """Called from any thread (the listener, stop()): claim now."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def saturated(self) -> bool:
        return self.active >= self.concurrency

    def run(self) -> None:
        """The lane's thread: an event loop until the worker stops and every task is done."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.app.dsn,
            min_size=1,
            max_size=self.connections,
            kwargs=self.app.connection_kwargs,
            name="pgdurable-async-lane",
            open=False,
        )
        await pool.open()
        tasks: set[asyncio.Task[None]] = set()
        try:
            await self._claim_loop(pool, tasks)
        finally:
            # Stopping: each run hands itself back at its next durable operation.
            if tasks:
                await asyncio.wait(tasks)
            await pool.close(timeout=5.0)

    async def _claim_loop(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], tasks: set[Any]
    ) -> None:
        assert self._wake is not None
        backoff = 0.1
        self.ready.set()
        while not self.stop.is_set():
            self._wake.clear()
            free = self.concurrency - self.active
            if free > 0:
                try:
                    rows = await self._claim(pool, free)
                    backoff = 0.1
                except psycopg.Error as exc:
                    if backoff == 0.1 or backoff >= 2.0:
                        log.warning("async lane: claim failed (%s); retrying", describe(exc))
                    if is_connection_error(exc):
                        await pool.check()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                obs = _telemetry.observer
                if obs is not None and rows:
                    obs.slots_changed("async", len(rows))
                for row in rows:
                    held = self.app.leases.hold(row[0], row[5], bool(row[10]))
                    self.active += 1
                    task = asyncio.create_task(self._execute(pool, row, held))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if len(rows) == free:
                    continue
            await self._pause(self.poll_interval)

    async def _pause(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _claim(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], limit: int
    ) -> list[tuple[Any, ...]]:
        params = (self.app.worker_id, self.queues, limit, self.app.lease, self.workflows)
        obs = _telemetry.observer
        began = time.perf_counter() if obs is not None else 0.0
        async with pool.connection(timeout=CLAIM_CHECKOUT_TIMEOUT) as conn:
            cur = await aq.call_sql(conn, "claim_runs", params)
            rows: list[tuple[Any, ...]] = await cur.fetchall()
        if obs is not None:
            obs.claimed("async", len(rows), time.perf_counter() - began)
        return rows

    async def _execute(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        row: tuple[Any, ...],
        held: Held,
    ) -> None:
        try:
            outcome, _ = await execute_async(self.app, row, pool, self.stop, held, pool.check)
            if outcome == "completed":
                self.completed += 1
            elif outcome == "failed":
                self.failed += 1
        except Exception as exc:
            log.error("executing run %s raised: %r", row[0], exc)
        finally:
            self.active -= 1
            obs = _telemetry.observer
            if obs is not None:
                obs.slots_changed("async", -1)
            self._wake_soon()

    def _wake_soon(self) -> None:
        if self._wake is not None:
            self._wake.set()
