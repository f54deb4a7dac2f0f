"""The runtime an App gives everything below it: the database (DSN, pool, connections), the
settings (lease, limits, worker id), the held leases and the registry of workflows.

The executor, worker, handles and durable operations take a Runtime; only the App on top adds
decorators and the user-facing calls.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from ._codec import DEFAULT_LIMITS, Limits
from ._durations import seconds
from ._embedded import embedded_dsn
from ._leases import Leases
from ._names import check_text
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


class Runtime:
    """Connections and settings. ``dsn``: the PostgreSQL to use; else ``$PGDURABLE_DSN``; else
    the embedded development server (package ``pgserver``), whose schema is installed on first
    use. ``limits``: how large and deep a JSON value may be, written or read."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        lease: float = 30.0,
        pool_size: int | None = None,
        worker_id: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        lease_s = seconds(lease, "lease", allow_none=False, exclusive_minimum=True, maximum=86400)
        if pool_size is not None and (not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a pgdurable.Limits, got {type(limits).__name__}")
        self._dsn = dsn or os.environ.get("PGDURABLE_DSN") or None
        self.lease = lease_s
        self.limits = limits
        self.worker_id = check_text(
            "worker_id",
            worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            200,
        )
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self.workflows: dict[str, Registered] = {}
        self.leases = Leases(self)

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = embedded_dsn()
            with self.connect() as conn:
                init_schema(conn)
        return self._dsn

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of the caller's own (close it when done)."""
        return psycopg.connect(self.dsn, autocommit=True)

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    dsn = self.dsn
                    with self.connect() as conn:
                        check_schema(conn)
                    self._pool = ConnectionPool(
                        dsn,
                        min_size=1,
                        max_size=self._pool_size or 4,
                        kwargs={"autocommit": True},
                        name="pgdurable",
                        open=True,
                        # A connection the server dropped (restart, failover, idle timeout)
                        # is replaced at checkout instead of failing the caller's next call.
                        check=self._check_connection,
                    )
        return self._pool

    def _check_connection(self, conn: psycopg.Connection[Any]) -> None:
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
        self.leases.stop()
        if self._pool is not None:
            self._pool.close(timeout=2.0)
            self._pool = None
