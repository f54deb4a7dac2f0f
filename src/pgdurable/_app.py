"""The App: registry of workflows, steps and transactions, connections, and run handles."""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from . import _codec, _context, _steps
from ._codec import DEFAULT_LIMITS, Limits
from ._db import call_sql
from ._durations import seconds
from ._errors import RunNotFound
from ._handle import RunHandle
from ._leases import Leases
from ._queries import Q
from ._retry import Retry
from ._schema import check_schema, init_schema

if TYPE_CHECKING:
    from ._worker import Worker

P = ParamSpec("P")
R = TypeVar("R")

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:<>-")


def _check_name(kind: str, name: str) -> str:
    if not name or len(name) > 200 or not set(name) <= _NAME_OK or name[0].isdigit():
        raise ValueError(
            f"invalid {kind} name {name!r}: use letters, digits and _ . : < > -, "
            "not starting with a digit, at most 200 characters"
        )
    return name


def _seconds(value: float | timedelta | None, what: str) -> float | None:
    return seconds(value, what)


def _check_text(what: str, value: str, limit: int = 500) -> str:
    """A name or key the engine stores as text: a string, 1 to ``limit`` characters, no NUL."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > limit:
        raise ValueError(f"{what} must be 1 to {limit} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(
            f"{what} {value!r} contains a NUL character, which PostgreSQL cannot store"
        )
    return value


def _reject_async(kind: str, fn: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@app.{kind}() got the async function {fn.__qualname__}: async workflows, steps and "
            "transactions are not supported yet; make it a plain def (run async code inside a "
            "step with asyncio.run) or wait for async support"
        )


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


_POOL_LOG_FILTER = _RateLimitedPoolLog()
logging.getLogger("psycopg.pool").addFilter(_POOL_LOG_FILTER)


class App:
    """A pgdurable application: where workflows are registered and runs are started.

    ``dsn``: the PostgreSQL to use; else ``$PGDURABLE_DSN``; else the embedded development
    server (package ``pgserver``), whose schema is installed on first use. ``limits``: how
    large and deep a JSON value (arguments, results, payloads) may be, written or read.
    """

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
        self.lease = float(lease_s or 0.0)
        self.limits = limits
        self.worker_id = _check_text(
            "worker_id",
            worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            200,
        )
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self.workflows: dict[str, Workflow[Any, Any]] = {}
        self.leases = Leases(self)

    # --- connections -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            from ._embedded import embedded_dsn

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
                    size = self._pool_size or 4
                    self._pool = ConnectionPool(
                        dsn,
                        min_size=1,
                        max_size=size,
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

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- decorators --------------------------------------------------------------------------

    def workflow(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        max_recoveries: int | None = None,
        on_failure: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Callable[[Callable[P, R]], Workflow[P, R]]:
        """Register a workflow. Its name defaults to the function's qualified name.

        ``on_failure(info)`` runs once, durably, when a run fails; ``info`` holds run_id,
        workflow_id, failed_step, error, input and the outputs of the completed steps.
        """

        def wrap(fn: Callable[P, R]) -> Workflow[P, R]:
            _reject_async("workflow", fn)
            wf_name = _check_name("workflow", name or fn.__qualname__.replace("<locals>.", ""))
            _check_name("queue", queue)
            if wf_name in self.workflows:
                raise ValueError(
                    f"a workflow named {wf_name!r} is already registered on this app: "
                    "give one of them name=..."
                )
            wf = Workflow(self, fn, wf_name, queue, max_recoveries, on_failure)
            self.workflows[wf_name] = wf
            return wf

        return wrap

    def step(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[Callable[P, R]], Step[P, R]]:
        """Declare a step: at-least-once, its result checkpointed, retried per ``retry``."""

        def wrap(fn: Callable[P, R]) -> Step[P, R]:
            _reject_async("step", fn)
            return Step(fn, _check_name("step", name or fn.__name__), retry or Retry())

        return wrap

    def transaction(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[Callable[Concatenate[psycopg.Connection[Any], P], R]], Transaction[P, R]]:
        """Declare a transaction step: its writes and its checkpoint commit together."""

        def wrap(fn: Callable[Concatenate[psycopg.Connection[Any], P], R]) -> Transaction[P, R]:
            _reject_async("transaction", fn)
            policy = retry or Retry(max_attempts=3, initial_delay=0.05)
            return Transaction(self, fn, _check_name("transaction", name or fn.__name__), policy)

        return wrap

    # --- runs --------------------------------------------------------------------------------

    def handle(self, workflow_id: str | uuid.UUID) -> RunHandle[Any]:
        """The handle of an existing run, by workflow_id or run id."""
        with self.pool.connection() as conn:
            row = conn.execute(Q["run_by_workflow_id"], run_key(workflow_id)).fetchone()
        if row is None:
            raise RunNotFound(f"no run has workflow_id or id {str(workflow_id)!r}")
        return RunHandle(self, row[0], row[1], row[2])

    def worker(
        self,
        concurrency: int = 8,
        *,
        queues: Iterable[str] | None = None,
        poll_interval: float = 1.0,
    ) -> Worker:
        from ._worker import Worker

        return Worker(self, concurrency=concurrency, queues=queues, poll_interval=poll_interval)

    def emit_event(
        self, name: str, payload: Any = None, *, conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Emit the durable event ``name``: every run waiting for it wakes. Inside a workflow it
        is checkpointed; with ``conn`` it exists only if that transaction commits."""
        from ._waiting import emit_in_run

        ctx = _context.current()
        if ctx is not None and conn is None:
            emit_in_run(ctx, name, payload)
            return
        _check_text("event name", name)
        body = _codec.checked(payload, f"payload of event {name!r}", self.limits)
        if conn is not None:
            call_sql(conn, "emit_event", (name, body))
        else:
            with self.pool.connection() as c:
                call_sql(c, "emit_event", (name, body))

    def send(
        self,
        target: str | uuid.UUID,
        payload: Any = None,
        *,
        topic: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Send a message to a run (by workflow_id or run id); it reads it with recv(topic).
        Raises RunNotFound for an unknown run, InvalidState for a finished one."""
        from ._waiting import send_in_run

        ctx = _context.current()
        if ctx is not None and conn is None:
            send_in_run(ctx, str(target), payload, topic)
            return
        _check_text("message target", str(target))
        if topic is not None:
            _check_text("message topic", topic)
        body = _codec.checked(payload, "message payload", self.limits)
        if conn is not None:
            call_sql(conn, "send_message", (str(target), body, topic))
        else:
            with self.pool.connection() as c:
                call_sql(c, "send_message", (str(target), body, topic))

    def start(
        self,
        workflow_name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
        allow_unregistered: bool = False,
        **options: Any,
    ) -> RunHandle[Any]:
        """Start a run by workflow name. A name neither this App nor any worker has registered
        is refused (a typo would otherwise wait forever) unless ``allow_unregistered``."""
        opts = _Options(**options)
        wf = self.workflows.get(workflow_name)
        opts.require_registered = wf is None and not allow_unregistered
        return _start(self, workflow_name, tuple(args), kwargs or {}, opts, conn, wf)


def run_key(key: str | uuid.UUID) -> dict[str, Any]:
    """Parameters of run_by_workflow_id: a uuid-shaped key is looked up as a run id first."""
    text = str(key)
    try:
        run_id = uuid.UUID(text) if len(text) == 36 else None
    except ValueError:
        run_id = None
    return {"key": text, "run_id": run_id}


class _Options:
    __slots__ = (
        "delay",
        "max_recoveries",
        "on_conflict",
        "parent_id",
        "priority",
        "queue",
        "require_registered",
        "timeout",
        "workflow_id",
    )

    def __init__(
        self,
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        on_conflict: str | None = None,
        timeout: float | timedelta | None = None,
        max_recoveries: int | None = None,
        parent_id: str | None = None,
    ) -> None:
        if on_conflict not in (None, "return", "raise"):
            raise ValueError(f"on_conflict must be 'return' or 'raise', got {on_conflict!r}")
        if queue is not None:
            _check_name("queue", queue)
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if priority is not None and not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority must fit in 32 bits, got {priority}")
        if max_recoveries is not None and (
            isinstance(max_recoveries, bool)
            or not isinstance(max_recoveries, int)
            or not 0 <= max_recoveries <= 10_000
        ):
            raise ValueError(
                f"max_recoveries must be an int from 0 to 10000, got {max_recoveries!r}"
            )
        if workflow_id is not None:
            _check_text("workflow_id", str(workflow_id))
        self.workflow_id = workflow_id
        self.queue = queue
        self.priority = priority
        self.delay = _seconds(delay, "delay")
        self.timeout = seconds(timeout, "timeout", exclusive_minimum=True)
        self.on_conflict = on_conflict
        self.max_recoveries = max_recoveries
        self.parent_id = parent_id
        self.require_registered = False

    def to_json(self, default_queue: str | None, default_recoveries: int | None) -> dict[str, Any]:
        # no queue at all: start_run uses the one the workflow's workers registered
        out: dict[str, Any] = {}
        if self.queue or default_queue:
            out["queue"] = self.queue or default_queue
        if self.workflow_id is not None:
            out["workflow_id"] = str(self.workflow_id)
        for key in ("priority", "delay", "on_conflict", "timeout", "parent_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        recoveries = self.max_recoveries if self.max_recoveries is not None else default_recoveries
        if recoveries is not None:
            out["max_recoveries"] = recoveries
        if self.require_registered:
            out["require_registered"] = True
        return out


def _start(
    app: App,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: _Options,
    conn: psycopg.Connection[Any] | None,
    wf: Workflow[Any, Any] | None = None,
) -> RunHandle[Any]:
    payload = _codec.encode_input(args, kwargs, app.limits)
    options = Jsonb(opts.to_json(wf.queue if wf else None, wf.max_recoveries if wf else None))
    if conn is not None:
        run_id = call_sql(conn, "start_run", (name, payload, options)).fetchone()[0]
    else:
        with app.pool.connection() as c:
            run_id = call_sql(c, "start_run", (name, payload, options)).fetchone()[0]
    key = opts.workflow_id
    workflow_id = key.lower() if key is not None and str(run_id) == key.lower() else key
    return RunHandle(app, run_id, workflow_id or str(run_id), name)


class Workflow(Generic[P, R]):
    """A registered workflow. Call it to run durably here; ``start()`` to enqueue it."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        name: str,
        queue: str,
        max_recoveries: int | None,
        on_failure: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.on_failure = on_failure
        self.name = name
        self.queue = queue
        self.max_recoveries = max_recoveries
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable workflow {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return WorkflowCall(self, _Options()).__call__(*args, **kwargs)

    def start(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        return WorkflowCall(self, _Options()).start(*args, **kwargs)

    def start_many(
        self,
        calls: Iterable[Sequence[Any]],
        *,
        workflow_ids: Sequence[str] | None = None,
        conn: psycopg.Connection[Any] | None = None,
        **options: Any,
    ) -> list[RunHandle[R]]:
        """Start one run per element of ``calls`` (each a tuple of positional arguments) in a
        single statement."""
        opts = _Options(**options)
        if opts.workflow_id is not None:
            raise ValueError("start_many takes workflow_ids=[...], not workflow_id=")
        inputs = [_codec.encode_input(tuple(c), {}, self.app.limits) for c in calls]
        ids = (
            [_check_text(f"workflow_ids[{i}]", str(k)) for i, k in enumerate(workflow_ids)]
            if workflow_ids is not None
            else None
        )
        if ids is not None and len(ids) != len(inputs):
            raise ValueError(f"start_many got {len(inputs)} calls but {len(ids)} workflow_ids")
        params = (self.name, inputs, Jsonb(opts.to_json(self.queue, self.max_recoveries)), ids)

        def run(c: psycopg.Connection[Any]) -> list[Any]:
            return [r[0] for r in call_sql(c, "start_runs", params).fetchall()]

        if conn is not None:
            run_ids = run(conn)
        else:
            with self.app.pool.connection() as c, c.transaction():
                run_ids = run(c)
        keys: list[str | None] = list(ids) if ids is not None else [None] * len(run_ids)
        return [
            RunHandle(self.app, r, k or str(r), self.name)
            for r, k in zip(run_ids, keys, strict=False)
        ]

    def options(
        self,
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        on_conflict: str | None = None,
        timeout: float | timedelta | None = None,
        max_recoveries: int | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> WorkflowCall[P, R]:
        """Start options for one call: ``wf.options(workflow_id="o-1").start(...)``."""
        opts = _Options(
            workflow_id=workflow_id,
            queue=queue,
            priority=priority,
            delay=delay,
            on_conflict=on_conflict,
            timeout=timeout,
            max_recoveries=max_recoveries,
        )
        return WorkflowCall(self, opts, conn)


class WorkflowCall(Generic[P, R]):
    """A workflow with start options bound."""

    def __init__(
        self, wf: Workflow[P, R], opts: _Options, conn: psycopg.Connection[Any] | None = None
    ) -> None:
        self.wf = wf
        self.opts = opts
        self.conn = conn

    def start(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        ctx = _context.current()
        if ctx is not None:
            return _steps.start_child(ctx, self.wf, self.opts, args, kwargs)
        return _start(self.wf.app, self.wf.name, args, dict(kwargs), self.opts, self.conn, self.wf)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current()
        if ctx is not None:
            child: RunHandle[R] = _steps.start_child(ctx, self.wf, self.opts, args, kwargs)
            return child.result()
        handle = self.start(*args, **kwargs)
        from ._executor import run_here

        result: R = run_here(self.wf.app, handle)
        return result


class Step(Generic[P, R]):
    """A durable step. Inside a workflow its result is checkpointed; outside, a plain call."""

    def __init__(self, fn: Callable[P, R], name: str, retry: Retry) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable step {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current()
        if ctx is None:
            return self.fn(*args, **kwargs)
        result: R = _steps.run_step(ctx, "step", self.name, self.retry, self.fn, args, kwargs)
        return result


class Transaction(Generic[P, R]):
    """A transaction step: called with a connection inside an open transaction, in which its
    checkpoint commits too. Outside a workflow it runs in a transaction of its own."""

    def __init__(
        self,
        app: App,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], R],
        name: str,
        retry: Retry,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.retry = retry
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable transaction {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current()
        if ctx is None:
            with self.app.pool.connection() as conn, conn.transaction():
                return self.fn(conn, *args, **kwargs)
        result: R = _steps.run_transaction(ctx, self.name, self.retry, self.fn, args, kwargs)
        return result
