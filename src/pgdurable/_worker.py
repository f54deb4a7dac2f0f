"""The worker: claims runs of its queues and workflows and executes them on a pool of threads."""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from . import _telemetry
from ._async_lane import AsyncLane
from ._claims import claim_size
from ._db import call_sql, describe, is_connection_error
from ._durations import seconds
from ._executor import execute
from ._housekeeping import (
    PURGE_EVERY,
    SCHEDULE_EVERY,
    apply_declarations,
    fire_schedules,
    listener_connections,
    purge,
    warn_if_pooled,
)
from ._leases import Held
from ._metrics import MetricsServer
from ._names import check_queue
from ._queries import Q
from ._tracing import ensure_installed

if TYPE_CHECKING:
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.worker")


def _is_async(wf: Any) -> bool:
    return bool(getattr(wf, "is_async", False))


# The longest a claim waits for a pooled connection: past it the loop retries (and stays
# responsive to stop()) instead of blocking up to the pool's 30 s while it reconnects.
CLAIM_CHECKOUT_TIMEOUT = 3.0
# A claimed run waits this long for its connection (heartbeated meanwhile), then its lease
# is left to lapse: the database is down, and the run is taken back once it is up.
RUN_CHECKOUT_TIMEOUT = 10.0

# How often a worker tells the registry it is alive (pgdurable.workers.last_seen_at); the
# unserved_runs view counts a worker as live for a minute after that.
REGISTER_EVERY = 10.0


def _count(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise ValueError(f"{name} must be between 1 and {maximum}, got {value}")
    return value


class Worker:
    """Runs workflows of ``queues`` (default: the queues of the app's registered workflows and
    those it declares with ``app.queue(...)``).

    It claims only runs of workflows its App registers: plain ones on ``concurrency`` threads,
    async ones as up to ``async_concurrency`` tasks on one event loop in a thread of their own,
    sharing ``async_connections`` database connections. ``run()`` blocks until ``stop()`` or
    SIGTERM/SIGINT: then it stops claiming, lets each current run reach its next durable
    operation and hands it back, so another worker takes it at once. A second signal exits
    without waiting (leases then expire).
    """

    def __init__(
        self,
        app: Runtime,
        *,
        concurrency: int = 8,
        queues: Iterable[str] | None = None,
        poll_interval: float = 1.0,
        async_concurrency: int = 100,
        async_connections: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        self.app = app
        self.concurrency = _count("concurrency", concurrency, 10_000)
        self.async_concurrency = _count("async_concurrency", async_concurrency, 100_000)
        self.async_connections = _count(
            "async_connections",
            async_connections or min(self.async_concurrency, 10) + 1,
            10_000,
        )
        chosen = (
            list(queues)
            if queues is not None
            else sorted(
                {wf.queue for wf in app.workflows.values()}
                | set(getattr(app, "queues", {}))
                | {"default"}
            )
        )
        self.queues = [check_queue(q) for q in chosen]
        self.poll_interval = float(
            seconds(poll_interval, "poll_interval", allow_none=False, exclusive_minimum=True) or 0.0
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._active = 0
        self._lock = threading.Lock()
        self._completed = 0
        self._failed = 0
        self.ready = threading.Event()
        self._sync_names = sorted(n for n, wf in app.workflows.items() if not _is_async(wf))
        async_names = sorted(n for n, wf in app.workflows.items() if _is_async(wf))
        self._lane = (
            AsyncLane(
                app,
                async_names,
                self.queues,
                self.async_concurrency,
                self.async_connections,
                self._stop,
                self.poll_interval,
            )
            if async_names
            else None
        )
        slots = {"sync": self.concurrency, "async": self.async_concurrency if async_names else 0}
        self.metrics: MetricsServer | None = None  # serves /metrics while run() runs
        if metrics_port is not None:
            self.metrics = MetricsServer(app, metrics_host, metrics_port, slots)

    @property
    def completed(self) -> int:
        """Runs this worker completed (sync and async)."""
        return self._completed + (self._lane.completed if self._lane else 0)

    @property
    def failed(self) -> int:
        """Runs this worker ended failed (sync and async)."""
        return self._failed + (self._lane.failed if self._lane else 0)

    # --- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and hand back current runs at their next durable operation."""
        self._stop.set()
        self._ring()

    def _ring(self) -> None:
        """Wake both lanes' claim loops (a NOTIFY, a stop)."""
        self._wake.set()
        if self._lane is not None:
            self._lane.wake()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop.is_set():
            log.warning("second signal: exiting now; held leases will expire")
            raise SystemExit(1)
        log.info("signal %s: stopping (finishing or handing back %s runs)", signum, self._active)
        self.stop()

    def unserved_workflows(self) -> dict[str, str]:
        """{workflow: queue} of the App's workflows (children included) on queues this worker
        does not claim: their runs wait for another worker."""
        return {
            name: wf.queue
            for name, wf in sorted(self.app.workflows.items())
            if wf.queue not in self.queues
        }

    def run(self) -> None:
        """Claim and execute runs until stopped."""
        ensure_installed()
        if self.metrics is not None:
            self.metrics.start()
        installed: list[tuple[signal.Signals, Any]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed.append((sig, signal.signal(sig, self._on_signal)))
        unserved = self.unserved_workflows()
        if unserved:
            log.warning(
                "this worker claims queues %s, so runs of %s will wait for another worker "
                "(add those queues with --queue, or run a worker for them)",
                ", ".join(self.queues),
                ", ".join(f"{name} (queue {queue})" for name, queue in unserved.items()),
                extra={"queues": self.queues, "unserved": unserved},
            )
        self.app.ensure_pool_size(self.concurrency + 1)
        warn_if_pooled(self.app)
        apply_declarations(self.app)
        self._register()
        listener = threading.Thread(target=self._listen, name="pgdurable-listen", daemon=True)
        listener.start()
        lane = None
        if self._lane is not None:
            lane = threading.Thread(target=self._lane.run, name="pgdurable-async", daemon=True)
            lane.start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pgdurable-run")
        try:
            self._loop(pool)
        finally:
            pool.shutdown(wait=True)
            if lane is not None:
                self._stop.set()
                self._lane.wake()  # type: ignore[union-attr]
                lane.join()
            for signum, previous in installed:
                signal.signal(signum, previous)
            if self.metrics is not None:
                self.metrics.stop()
            self._unregister()
            log.info("worker %s stopped", self.app.worker_id)

    # --- internals ---------------------------------------------------------------------------

    def _registration(self) -> tuple[Any, ...]:
        workflows = [{"name": n, "queue": wf.queue} for n, wf in self.app.workflows.items()]
        return (self.app.worker_id, self.queues, Jsonb(workflows))

    def _register(self, conn: psycopg.Connection[Any] | None = None) -> None:
        try:
            if conn is not None:
                call_sql(conn, "register_worker", self._registration())
            else:
                with self.app.pool.connection() as c:
                    call_sql(c, "register_worker", self._registration())
        except psycopg.Error as exc:
            log.warning("could not register worker %s: %s", self.app.worker_id, describe(exc))

    def _unregister(self) -> None:
        # A connection of its own: the pool may be reconnecting after a restart, and a
        # stopping worker must exit promptly.
        try:
            kwargs = self.app.connection_kwargs
            with (
                psycopg.connect(self.app.dsn, **kwargs, connect_timeout=2) as conn,
                conn.transaction(),
            ):
                # never wait on a lock at exit: the registry forgets a silent worker anyway
                conn.execute(Q["exit_timeouts"])  # SET LOCAL: nothing stays on a pooled session
                call_sql(conn, "unregister_worker", (self.app.worker_id,))
        except Exception as exc:  # best effort: the registry forgets silent workers anyway
            log.info("could not unregister worker %s: %s", self.app.worker_id, exc)

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        backoff = 0.1
        deep = False  # the last claim got all it asked for: the queue holds more
        self.ready.set()
        while not self._stop.is_set():
            # Cleared before looking, so a NOTIFY or a freed slot that arrives while we claim
            # makes the wait below return at once instead of being lost.
            self._wake.clear()
            with self._lock:
                free = claim_size(self.concurrency, self._active, deep)
            if free > 0:
                try:
                    rows = self._claim(free)
                    deep = len(rows) == free
                    if backoff > 0.1:
                        log.warning("claims work again")
                    backoff = 0.1
                except psycopg.Error as exc:
                    if backoff == 0.1 or backoff >= 2.0:
                        log.warning("claim failed (%s); retrying", describe(exc))
                    if is_connection_error(exc):
                        # Replace the pool's dead idle connections now, not one by one at
                        # checkout with growing backoff (which stalled claims ~30 s after a
                        # server restart).
                        self.app.connection_lost()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                log.debug("claimed %d of %d free slots", len(rows), free)
                obs = _telemetry.observer
                if obs is not None and rows:
                    obs.slots_changed("sync", len(rows))
                for row in rows:
                    # Held from the claim on: heartbeated even while it waits for a connection.
                    held = self.app.leases.hold(row[0], row[5], bool(row[10]))
                    with self._lock:
                        self._active += 1
                    pool.submit(self._execute, row, held).add_done_callback(self._done)
                if len(rows) == free:
                    continue  # the queue may hold more: claim again as soon as a slot frees
            self._wake.wait(self.poll_interval)

    def _claim(self, limit: int) -> list[tuple[Any, ...]]:
        workflows = self._sync_names
        if not workflows:
            return []
        obs = _telemetry.observer
        began = time.perf_counter() if obs is not None else 0.0
        with self.app.pool.connection(timeout=CLAIM_CHECKOUT_TIMEOUT) as conn:
            rows: list[tuple[Any, ...]] = call_sql(
                conn,
                "claim_runs",
                (self.app.worker_id, self.queues, limit, self.app.lease, workflows),
            ).fetchall()
        if obs is not None:
            obs.claimed("sync", len(rows), time.perf_counter() - began)
        return rows

    def _execute(self, row: tuple[Any, ...], held: Held) -> str:
        try:
            with self.app.pool.connection(timeout=RUN_CHECKOUT_TIMEOUT) as conn:
                outcome, _ = execute(self.app, row, conn, self._stop, held)
        except psycopg.Error as exc:
            # No connection could be had: the lease lapses and the run is taken back (free of
            # charge if the server restarted).
            self.app.leases.release(held)
            log.warning("run %s: no database connection (%s)", row[0], describe(exc))
            if is_connection_error(exc):
                self.app.connection_lost()
            return "released"
        return outcome

    def _done(self, fut: Future[str]) -> None:
        with self._lock:
            self._active -= 1
        obs = _telemetry.observer
        if obs is not None:
            obs.slots_changed("sync", -1)
        exc = fut.exception()
        if exc is not None:
            log.error("executing a run raised: %r", exc)
        elif fut.result() == "completed":
            self._completed += 1
        elif fut.result() == "failed":
            self._failed += 1
        self._wake.set()

    def _saturated(self) -> bool:
        """Every lane busy: nobody claims, so the listener must run tick_due itself."""
        with self._lock:
            busy = self._active >= self.concurrency or not self._sync_names
        return busy and (self._lane is None or self._lane.saturated())

    def _listen(self) -> None:
        """Wake the claim loop on NOTIFY; reconnect with backoff. Polling covers the gaps (and
        is all there is behind a transaction pooler without a listen_dsn). On the chores
        connection (the same one unless a listen_dsn is given): the registry heartbeat, firing
        due schedules every second, and tick_due() while every slot is busy (claims run it
        otherwise), so timers and expired leases never wait for a free slot."""
        backoff = 0.5
        wanted = set(self.queues)
        while not self._stop.is_set():
            try:
                with contextlib.ExitStack() as stack:
                    conn, ears = listener_connections(self.app, stack)
                    if backoff > 0.5:
                        log.warning("listener reconnected")
                    backoff = 0.5
                    self._ring()  # anything sent while we were not listening
                    registered = ticked = fired = time.monotonic()
                    purge_at = registered + PURGE_EVERY * random.random()
                    while not self._stop.is_set():
                        if ears is None:  # behind a pooler, no listen_dsn: the claims poll
                            self._stop.wait(min(1.0, self.poll_interval))
                        else:
                            for note in ears.notifies(timeout=min(1.0, self.poll_interval)):
                                log.debug("notified: %s", note.payload)
                                if note.payload in wanted:
                                    self._ring()
                        now = time.monotonic()
                        chores = False
                        if now - registered >= REGISTER_EVERY:
                            self._register(conn)
                            registered, chores = now, True
                        if now - ticked >= self.poll_interval and self._saturated():
                            call_sql(conn, "tick_due")
                            ticked, chores = now, True
                        if now - fired >= SCHEDULE_EVERY:
                            fire_schedules(conn)
                            fired, chores = now, True
                        if now >= purge_at:
                            purge_at, chores = now + purge(conn), True
                        if chores and ears is conn:
                            # a no-op for the subscription; pg_stat_activity shows this session
                            # as the listener again (operators and tests find workers by it)
                            conn.execute(Q["listen_wake"])
            except psycopg.Error as exc:
                if backoff == 0.5:
                    log.info("listener disconnected (%s); polling until it reconnects", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
