"""The runs this process executes, and the one thread that heartbeats all their leases."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from ._queries import Q

if TYPE_CHECKING:
    from ._app import App
    from ._context import RunContext

log = logging.getLogger("pgdurable.leases")


class Leases:
    """Heartbeats every run this App executes in one statement, every lease/3 seconds."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.active: dict[UUID, RunContext] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def add(self, ctx: RunContext) -> None:
        with self._lock:
            self.active[ctx.run_id] = ctx
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="pgdurable-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, ctx: RunContext) -> None:
        with self._lock:
            if self.active.get(ctx.run_id) is ctx:
                del self.active[ctx.run_id]

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None

    def beat(self) -> None:
        """One heartbeat of all held runs; marks lost and cancel-requested ones."""
        with self._lock:
            held = list(self.active.values())
        if not held:
            return
        ids = [c.run_id for c in held]
        attempts = [c.attempt for c in held]
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.app.dsn, autocommit=True, connect_timeout=10)
        try:
            rows = self._conn.execute(
                Q["heartbeat"], (self.app.worker_id, ids, attempts, self.app.lease)
            ).fetchall()
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise
        by_id = {c.run_id: c for c in held}
        for run_id, lost, cancel in rows:
            ctx = by_id.get(run_id)
            with self._lock:
                still_here = ctx is not None and self.active.get(run_id) is ctx
            if ctx is None or not still_here:
                # It completed or suspended while the heartbeat was in flight: not a takeover.
                continue
            if lost:
                log.warning("lost the lease of run %s: another worker took it over", run_id)
                ctx.lost = True
            if cancel:
                ctx.cancel_requested = True

    def _loop(self) -> None:
        interval = self.app.lease / 3
        while not self._stop.wait(interval):
            try:
                self.beat()
            except psycopg.Error as exc:
                # The database is unreachable: keep trying; the runs go on until their leases
                # expire, after which their fenced writes are rejected.
                log.warning("heartbeat failed, will retry: %s", exc)
            with self._lock:
                if not self.active:
                    self._thread = None
                    break
        if self._conn is not None:
            self._conn.close()
            self._conn = None
