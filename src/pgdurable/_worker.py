"""The worker: claims runs of its queues and executes them on a pool of threads."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from ._executor import execute
from ._queries import Q

if TYPE_CHECKING:
    from ._app import App

log = logging.getLogger("pgdurable.worker")


class Worker:
    """Runs workflows of ``queues`` (default: the queues of the app's registered workflows).

    ``run()`` blocks until ``stop()`` or SIGTERM/SIGINT: then it stops claiming, lets each
    current run reach its next durable operation and hands it back, so another worker takes it
    at once. A second signal exits without waiting (leases then expire).
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int = 8,
        queues: Iterable[str] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        from ._app import _check_name

        self.app = app
        self.concurrency = concurrency
        chosen = (
            list(queues)
            if queues is not None
            else sorted({wf.queue for wf in app.workflows.values()} | {"default"})
        )
        self.queues = [_check_name("queue", q) for q in chosen]
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._active = 0
        self._lock = threading.Lock()
        self.completed = 0
        self.failed = 0
        self.ready = threading.Event()

    # --- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and hand back current runs at their next durable operation."""
        self._stop.set()
        self._wake.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now; held leases will expire")
            raise SystemExit(1)
        log.info("signal %s: stopping (finishing or handing back %s runs)", signum, self._active)
        self.stop()

    def run(self) -> None:
        """Claim and execute runs until stopped."""
        installed: list[tuple[signal.Signals, Any]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed.append((sig, signal.signal(sig, self._on_signal)))
        self.app.ensure_pool_size(self.concurrency + 1)
        listener = threading.Thread(target=self._listen, name="pgdurable-listen", daemon=True)
        listener.start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pgdurable-run")
        try:
            self._loop(pool)
        finally:
            pool.shutdown(wait=True)
            for signum, previous in installed:
                signal.signal(signum, previous)
            log.info("worker %s stopped", self.app.worker_id)

    # --- internals ---------------------------------------------------------------------------

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        backoff = 0.1
        self.ready.set()
        while not self._stop.is_set():
            # Cleared before looking, so a NOTIFY or a freed slot that arrives while we claim
            # makes the wait below return at once instead of being lost.
            self._wake.clear()
            with self._lock:
                free = self.concurrency - self._active
            if free > 0:
                try:
                    rows = self._claim(free)
                    backoff = 0.1
                except psycopg.Error as exc:
                    log.warning("claim failed (%s); retrying in %.1f s", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                log.debug("claimed %d of %d free slots", len(rows), free)
                for row in rows:
                    with self._lock:
                        self._active += 1
                    pool.submit(self._execute, row).add_done_callback(self._done)
                if len(rows) == free:
                    continue  # the queue may hold more: claim again as soon as a slot frees
            self._wake.wait(self.poll_interval)

    def _claim(self, limit: int) -> list[tuple[Any, ...]]:
        from ._app import call_sql

        with self.app.pool.connection() as conn:
            rows: list[tuple[Any, ...]] = call_sql(
                conn, "claim_runs", (self.app.worker_id, self.queues, limit, self.app.lease)
            ).fetchall()
            return rows

    def _execute(self, row: tuple[Any, ...]) -> str:
        with self.app.pool.connection() as conn:
            outcome, value = execute(self.app, row, conn, self._stop)
        if outcome == "failed":
            log.info("run %s failed: %r", row[0], value)
        return outcome

    def _done(self, fut: Future[str]) -> None:
        with self._lock:
            self._active -= 1
        exc = fut.exception()
        if exc is not None:
            log.error("executing a run raised: %r", exc)
        elif fut.result() == "completed":
            self.completed += 1
        elif fut.result() == "failed":
            self.failed += 1
        self._wake.set()

    def _listen(self) -> None:
        """Wake the claim loop on NOTIFY; reconnect with backoff. Polling covers the gaps."""
        backoff = 0.5
        wanted = set(self.queues)
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.app.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(Q["listen_wake"])
                    backoff = 0.5
                    self._wake.set()  # anything sent while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            log.debug("notified: %s", note.payload)
                            if note.payload in wanted:
                                self._wake.set()
            except psycopg.Error as exc:
                log.info("listener disconnected (%s); polling until it reconnects", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
