"""What the decorators make: workflows (with start options bound, or not), steps and
transactions. Each is a plain callable: inside a workflow it acts durably, outside it starts or
runs normally. The App that registers them is separate (_app.py)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import psycopg
from psycopg.types.json import Jsonb

from . import _async_queries as aq
from . import _codec, _context
from ._async_queries import async_conn, sync_conn
from ._children import child_plan
from ._db import call_sql
from ._executor import run_here, run_here_async
from ._handle import RunHandle, refuse_in_workflow
from ._names import check_text
from ._options import StartOptions
from ._retry import Retry
from ._starting import start, start_async
from ._steps import step_plan, transaction_plan
from ._tracing import with_trace
from ._waiting import result_plan

if TYPE_CHECKING:
    from ._runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")


def _mismatch(kind: str, name: str) -> TypeError:
    return TypeError(
        f"{kind} {name!r} is an async def but runs in a plain (sync) workflow, which cannot "
        "await it: make the workflow `async def` and `await` the call, or make the "
        f"{kind} a plain def"
    )


class Workflow(Generic[P, R]):
    """A registered workflow. Call it to run durably here; ``start()`` to enqueue it. An async
    def workflow runs on a worker's event loop, and its durable calls are awaited."""

    def __init__(
        self,
        app: Runtime,
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
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable workflow {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return WorkflowCall(self, StartOptions()).__call__(*args, **kwargs)

    def start(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        return WorkflowCall(self, StartOptions()).start(*args, **kwargs)

    async def start_async(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        """``start()`` for asyncio code: ``handle = await wf.start_async(...)``."""
        return await WorkflowCall(self, StartOptions()).start_async(*args, **kwargs)

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
        conn = sync_conn(conn, "start_many")
        params, ids = self._many_params(calls, workflow_ids, options)
        if conn is not None:
            run_ids = [r[0] for r in call_sql(conn, "start_runs", params).fetchall()]
        else:
            with self.app.pool.connection() as c, c.transaction():
                run_ids = [r[0] for r in call_sql(c, "start_runs", params).fetchall()]
        return self._many_handles(run_ids, ids)

    async def start_many_async(
        self,
        calls: Iterable[Sequence[Any]],
        *,
        workflow_ids: Sequence[str] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Any,
    ) -> list[RunHandle[R]]:
        """``start_many()`` for asyncio code; with an AsyncConnection ``conn`` the runs exist
        only if its transaction commits."""
        refuse_in_workflow("start_many_async")
        aconn = async_conn(conn, "start_many_async")
        params, ids = self._many_params(calls, workflow_ids, options)
        if aconn is not None:
            rows = await (await aq.call_sql(aconn, "start_runs", params)).fetchall()
        else:
            async with self.app.async_connection() as c, c.transaction():
                rows = await (await aq.call_sql(c, "start_runs", params)).fetchall()
        return self._many_handles([r[0] for r in rows], ids)

    def _many_params(
        self,
        calls: Iterable[Sequence[Any]],
        workflow_ids: Sequence[str] | None,
        options: dict[str, Any],
    ) -> tuple[tuple[Any, ...], list[str] | None]:
        """The ``start_runs`` parameters of a start_many, every argument checked first."""
        opts = StartOptions(**options)
        if opts.workflow_id is not None:
            raise ValueError("start_many takes workflow_ids=[...], not workflow_id=")
        inputs = [_codec.encode_input(tuple(c), {}, self.app.limits) for c in calls]
        ids = (
            [check_text(f"workflow_ids[{i}]", str(k)) for i, k in enumerate(workflow_ids)]
            if workflow_ids is not None
            else None
        )
        if ids is not None and len(ids) != len(inputs):
            raise ValueError(f"start_many got {len(inputs)} calls but {len(ids)} workflow_ids")
        # started in a span: every run of the batch joins its trace
        options_json = with_trace(opts.to_json(self.queue, self.max_recoveries))
        params = (self.name, inputs, Jsonb(options_json), ids)
        return params, ids

    def _many_handles(self, run_ids: list[Any], ids: list[str] | None) -> list[RunHandle[R]]:
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
        concurrency_key: str | None = None,
        dedup_key: str | None = None,
        debounce: float | timedelta | None = None,
        debounce_key: str | None = None,
        debounce_max_wait: float | timedelta | None = None,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
    ) -> WorkflowCall[P, R]:
        """Start options for one call: ``wf.options(workflow_id="o-1").start(...)``. A
        ``conn`` starts the run in its transaction: a Connection for ``start()``, an
        AsyncConnection for ``start_async()``. ``concurrency_key``: the key the queue's per-key
        limits apply to (one run per key at a time unless configured); ``dedup_key``: while an
        unfinished run of the queue has this key, a start returns it instead of a new run.
        ``debounce`` with ``debounce_key``: starts of the key within the window collapse into one
        run that starts once the window has passed with no new start, with the latest
        arguments, at the latest ``debounce_max_wait`` after the first."""
        opts = StartOptions(
            workflow_id=workflow_id,
            queue=queue,
            priority=priority,
            delay=delay,
            on_conflict=on_conflict,
            timeout=timeout,
            max_recoveries=max_recoveries,
            concurrency_key=concurrency_key,
            dedup_key=dedup_key,
            debounce=debounce,
            debounce_key=debounce_key,
            debounce_max_wait=debounce_max_wait,
        )
        return WorkflowCall(self, opts, conn)


class WorkflowCall(Generic[P, R]):
    """A workflow with start options bound."""

    def __init__(
        self,
        wf: Workflow[P, R],
        opts: StartOptions,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        self.wf = wf
        self.opts = opts
        self.conn = conn

    def start(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        """Enqueue a run and return its handle; inside a workflow, start a child run (durably:
        a replay returns the same child)."""
        ctx = _context.current()
        if ctx is not None:
            plan = child_plan(ctx, self.wf, self.opts, args, kwargs)
            child: RunHandle[R] = ctx.sync_driver(f"{self.wf.name}.start").run(plan)
            return child
        conn = sync_conn(self.conn, "start")
        return start(self.wf.app, self.wf.name, args, dict(kwargs), self.opts, conn, self.wf)

    async def start_async(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        """``start()`` for asyncio code; with ``options(conn=<AsyncConnection>)`` the run exists
        only if that connection's transaction commits. In an async workflow it starts a child
        run, durably."""
        ctx = _context.current()
        if ctx is not None:
            plan = child_plan(ctx, self.wf, self.opts, args, kwargs)
            child: RunHandle[R] = await ctx.async_driver(f"{self.wf.name}.start_async").run(plan)
            return child
        conn = async_conn(self.conn, "start_async")
        return await start_async(
            self.wf.app, self.wf.name, args, dict(kwargs), self.opts, conn, self.wf
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the workflow and return its result: inside a workflow as a child run (awaited
        in an async workflow); outside, executed here (an async def workflow returns a
        coroutine to await)."""
        ctx = _context.current()
        if ctx is not None:
            if ctx.is_async:
                return cast(R, self._child_async(ctx, args, kwargs))
            driver = ctx.sync_driver(self.wf.name)
            child: RunHandle[R] = driver.run(child_plan(ctx, self.wf, self.opts, args, kwargs))
            result: R = driver.run(
                result_plan(ctx, child.run_id, child.workflow_id, child.workflow_name)
            )
            return result
        if self.wf.is_async:
            return cast(R, self._here_async(args, kwargs))
        result = run_here(self.wf.app, self.start(*args, **kwargs))
        return result

    async def _child_async(
        self, ctx: _context.RunContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        driver = ctx.async_driver(self.wf.name)
        child = await driver.run(child_plan(ctx, self.wf, self.opts, args, kwargs))
        return await driver.run(
            result_plan(ctx, child.run_id, child.workflow_id, child.workflow_name)
        )

    async def _here_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        conn = async_conn(self.conn, "start_async")
        handle = await start_async(
            self.wf.app, self.wf.name, args, dict(kwargs), self.opts, conn, self.wf
        )
        return await run_here_async(self.wf.app, handle)


class Step(Generic[P, R]):
    """A durable step. Inside a workflow its result is checkpointed; outside, a plain call."""

    def __init__(self, fn: Callable[P, R], name: str, retry: Retry) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable step {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Inside a workflow: the step, durably (in an async workflow, a coroutine to await; a
        plain step then runs in a thread). Outside one: a plain call."""
        ctx = _context.current()
        if ctx is None:
            return self.fn(*args, **kwargs)
        driver = ctx.driver
        if self.is_async and not driver.is_async:
            raise _mismatch("step", self.name)
        plan = step_plan(ctx, "step", self.name, self.retry, self.fn, args, kwargs)
        return cast(R, driver.run(plan))


class Transaction(Generic[P, R]):
    """A transaction step: called with a connection inside an open transaction, in which its
    checkpoint commits too. Outside a workflow it runs in a transaction of its own."""

    def __init__(
        self,
        app: Runtime,
        fn: Callable[Concatenate[Any, P], R],
        name: str,
        retry: Retry,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<pgdurable transaction {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Inside a workflow: the transaction step, durably (awaited in an async workflow, which
        needs an async def transaction). Outside one: the function in a transaction of its
        own (a coroutine to await for an async def)."""
        ctx = _context.current()
        if ctx is None:
            if self.is_async:
                return cast(R, self._alone_async(args, kwargs))
            with self.app.pool.connection() as conn, conn.transaction():
                return self.fn(conn, *args, **kwargs)
        driver = ctx.driver
        if self.is_async != driver.is_async:
            if self.is_async:
                raise _mismatch("transaction", self.name)
            raise TypeError(
                f"transaction {self.name!r} is a plain def but runs in an async workflow: make "
                "it `async def` (it receives a psycopg.AsyncConnection, in the transaction "
                "its checkpoint commits in) and await it"
            )
        plan = transaction_plan(ctx, self.name, self.retry, self.fn, args, kwargs)
        return cast(R, driver.run(plan))

    async def _alone_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        async with self.app.async_connection() as conn, conn.transaction():
            return await cast(Any, self.fn)(conn, *args, **kwargs)
