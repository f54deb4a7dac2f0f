"""The App: a Runtime (database and settings) plus the registry its decorators fill, and the
calls users make from outside a workflow: start, handle, emit_event, send, worker."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg

from . import _codec, _context
from ._db import call_sql
from ._definitions import Step, Transaction, Workflow
from ._errors import RunNotFound
from ._handle import RunHandle
from ._names import check_name, check_text
from ._options import StartOptions
from ._queries import Q
from ._retry import Retry
from ._runtime import Runtime
from ._starting import run_key, start
from ._waiting import emit_in_run, send_in_run
from ._worker import Worker

P = ParamSpec("P")
R = TypeVar("R")


def _reject_async(kind: str, fn: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@app.{kind}() got the async function {fn.__qualname__}: async workflows, steps and "
            "transactions are not supported yet; make it a plain def (run async code inside a "
            "step with asyncio.run) or wait for async support"
        )


class App(Runtime):
    """A pgdurable application: where workflows are registered and runs are started.

    ``dsn``: the PostgreSQL to use; else ``$PGDURABLE_DSN``; else the embedded development
    server (package ``pgserver``), whose schema is installed on first use. ``limits``: how
    large and deep a JSON value (arguments, results, payloads) may be, written or read.
    """

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
            wf_name = check_name("workflow", name or fn.__qualname__.replace("<locals>.", ""))
            check_name("queue", queue)
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
            return Step(fn, check_name("step", name or fn.__name__), retry or Retry())

        return wrap

    def transaction(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[Callable[Concatenate[psycopg.Connection[Any], P], R]], Transaction[P, R]]:
        """Declare a transaction step: its writes and its checkpoint commit together."""

        def wrap(fn: Callable[Concatenate[psycopg.Connection[Any], P], R]) -> Transaction[P, R]:
            _reject_async("transaction", fn)
            policy = retry or Retry(max_attempts=3, initial_delay=0.05)
            return Transaction(self, fn, check_name("transaction", name or fn.__name__), policy)

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
        return Worker(self, concurrency=concurrency, queues=queues, poll_interval=poll_interval)

    def emit_event(
        self, name: str, payload: Any = None, *, conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Emit the durable event ``name``: every run waiting for it wakes. Inside a workflow it
        is checkpointed; with ``conn`` it exists only if that transaction commits."""
        ctx = _context.current()
        if ctx is not None and conn is None:
            emit_in_run(ctx, name, payload)
            return
        check_text("event name", name)
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
        ctx = _context.current()
        if ctx is not None and conn is None:
            send_in_run(ctx, str(target), payload, topic)
            return
        check_text("message target", str(target))
        if topic is not None:
            check_text("message topic", topic)
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
        opts = StartOptions(**options)
        wf = self.workflows.get(workflow_name)
        opts.require_registered = wf is None and not allow_unregistered
        return start(self, workflow_name, tuple(args), kwargs or {}, opts, conn, wf)
