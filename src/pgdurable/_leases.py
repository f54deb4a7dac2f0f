"""The runs this process holds, and the one thread that heartbeats all their leases."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol
from uuid import UUID

import psycopg

from ._queries import Q


class _Settings(Protocol):
    """What the heartbeat needs of its runtime."""

    @property
    def dsn(self) -> str: ...

    @property
    def connection_kwargs(self) -> dict[str, Any]: ...

    worker_id: str
    lease: float


log = logging.getLogger("pgdurable.leases")


class Held:
    """One run this process holds, from its claim to its hand-over; the heartbeat marks it lost
    (another worker took it over) or cancel-requested, and its executor checks both."""

    __slots__ = ("attempt", "cancel_requested", "lost", "pause_requested", "run_id")

    def __init__(self, run_id: UUID, attempt: int, cancel_requested: bool = False) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.lost = False
        self.cancel_requested = cancel_requested
        self.pause_requested = False


class Leases:
    """Heartbeats every run this App holds in one statement, every lease/3 seconds. A run is
    held from the moment it is claimed, so one still waiting for a connection keeps its lease."""

    def __init__(self, app: _Settings) -> None:
        self.app = app
        self.active: dict[UUID, Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def hold(self, run_id: UUID, attempt: int, cancel_requested: bool = False) -> Held:
        held = Held(run_id, attempt, cancel_requested)
        with self._lock:
            self.active[run_id] = held
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="pgdurable-heartbeat", daemon=True
                )
                self._thread.start()
        return held

    def release(self, held: Held) -> None:
        with self._lock:
            if self.active.get(held.run_id) is held:
                del self.active[held.run_id]

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None

    def beat(self) -> None:
        """One heartbeat of all held runs; marks lost, cancel- and pause-requested ones."""
        with self._lock:
            held = list(self.active.values())
        if not held:
            return
        ids = [h.run_id for h in held]
        attempts = [h.attempt for h in held]
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.app.dsn, **self.app.connection_kwargs, connect_timeout=10
            )
        try:
            rows = self._conn.execute(
                Q["heartbeat"], (self.app.worker_id, ids, attempts, self.app.lease)
            ).fetchall()
        except psycopg.Error:
            self._conn.close()
            self._conn = None
            raise
        by_id = {h.run_id: h for h in held}
        for run_id, lost, cancel, pause in rows:
            entry = by_id.get(run_id)
            with self._lock:
                still_here = entry is not None and self.active.get(run_id) is entry
            if entry is None or not still_here:
                # It completed or suspended while the heartbeat was in flight: not a takeover.
                continue
            if lost:
                log.warning(
                    "lost the lease of run %s: another worker took it over",
                    run_id,
                    extra={"run_id": str(run_id), "attempt": entry.attempt},
                )
                entry.lost = True
            if cancel:
                entry.cancel_requested = True
            if pause:
                entry.pause_requested = True

    def _loop(self) -> None:
        interval = self.app.lease / 3
        failing = False
        while not self._stop.wait(interval):
            try:
                self.beat()
                if failing:
                    log.warning("heartbeat works again")
                failing = False
            except psycopg.Error as exc:
                # The database is unreachable: keep trying; the runs go on until their leases
                # expire, after which their fenced writes are rejected. One line per outage.
                if not failing:
                    log.warning("heartbeat failed, retrying every %.1f s: %s", interval, exc)
                failing = True
            with self._lock:
                if not self.active:
                    self._thread = None
                    break
        if self._conn is not None:
            self._conn.close()
            self._conn = None
