"""RunHandle: look at, wait for and operate one run, from sync or async code.

Each operation's decisions and decoding live once, in the module-level helpers below; a sync
method and its ``_async`` twin differ only in how they reach the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import _async_queries as aq
from . import _codec
from ._context import current
from ._db import call_sql
from ._durations import seconds
from ._errors import RunNotFound
from ._queries import Q
from ._remote_errors import run_outcome
from ._streams import Reading, read_stream
from ._waiting import result_plan

if TYPE_CHECKING:
    import psycopg

    from ._codec import Limits
    from ._context import RunContext
    from ._ops import Plan
    from ._runtime import Runtime

R = TypeVar("R")

FINISHED = frozenset({"completed", "failed", "cancelled"})

# How long a result() wait sleeps between two reads of the run when no NOTIFY wakes it.
POLL = 1.0


def refuse_in_workflow(call: str) -> None:
    """Calls that are not durable operations: in workflow code one would not be recorded, and a
    replay would repeat it. Inside a step they are plain calls, like their sync twins."""
    if current() is not None:
        raise RuntimeError(
            f"{call}() inside workflow code would not be recorded, so a replay would repeat it: "
            "do it in a step, or use the durable operations (result_async(), "
            "pgdurable.gather_async(), a child workflow's start_async())"
        )


def decode_state(row: Sequence[Any] | None, run_id: UUID, limits: Limits) -> tuple[str, Any, Any]:
    """(status, output, error) of a ``run_state`` row, the JSON decoded within ``limits``."""
    if row is None:
        raise RunNotFound(f"run {run_id} no longer exists (deleted by retention?)")
    output = _codec.loads(row[1], f"output of run {run_id}", limits)
    error = _codec.loads(row[2], f"error of run {run_id}", limits)
    return row[0], output, error


def decode_steps(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], run_id: UUID, limits: Limits
) -> list[dict[str, Any]]:
    """The ``run_steps`` rows as dicts, their output and error decoded within ``limits``."""
    steps = [dict(zip(columns, row, strict=False)) for row in rows]
    for step in steps:
        for field in ("output", "error"):
            what = f"{field} of checkpoint {step['step_key']!r} of run {run_id}"
            step[field] = _codec.loads(step[field], what, limits)
    return steps


def outcome(handle: RunHandle[R], status: str, output: Any, error: Any) -> R:
    """A finished run's result: its output, or the exception its end means."""
    result: R = run_outcome(handle.run_id, handle.workflow_id, status, output, error)
    return result


def result_deadline(timeout: float | None, call: str) -> tuple[float | None, float | None]:
    """(timeout in seconds, monotonic deadline) of a ``call(timeout=...)`` wait."""
    secs = seconds(timeout, f"{call}() timeout")
    return secs, None if secs is None else time.monotonic() + secs


def next_wait(
    handle: RunHandle[Any],
    status: str,
    timeout: float | None,
    deadline: float | None,
    call: str,
) -> float:
    """How long to wait before reading an unfinished run again; TimeoutError when time is up."""
    if deadline is None:
        return POLL
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(
            f"run {handle.run_id} ({handle.workflow_id}) is still {status} after {timeout} s; "
            f"it goes on: call {call}() again to keep waiting"
        )
    return min(POLL, left)


class RunHandle(Generic[R]):
    """A reference to one run. Cheap to create; every method reads the database. Each method
    has an ``_async`` twin for asyncio code (``await handle.result_async()``)."""

    def __init__(
        self, app: Runtime, run_id: UUID | str, workflow_id: str, workflow_name: str
    ) -> None:
        self.app = app
        self.run_id = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name

    def __repr__(self) -> str:
        name, key = self.workflow_name, self.workflow_id
        return f"<RunHandle {name} workflow_id={key!r} run_id={self.run_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    def _in_workflow(self, ctx: RunContext, timeout: float | None) -> Plan[Any]:
        """result() inside a workflow: a durable wait that holds no worker meanwhile."""
        if timeout is not None:
            raise ValueError(
                "inside a workflow result() waits durably and takes no timeout: give the "
                "child a deadline with .options(timeout=...) instead"
            )
        return result_plan(ctx, self.run_id, self.workflow_id, self.workflow_name)

    # --- sync ------------------------------------------------------------------------------

    def _state(self, conn: psycopg.Connection[Any] | None = None) -> tuple[str, Any, Any]:
        if conn is not None:
            return decode_state(_run_state(conn, self.run_id), self.run_id, self.app.limits)
        with self.app.pool.connection() as c:
            return decode_state(_run_state(c, self.run_id), self.run_id, self.app.limits)

    def status(self) -> str:
        """pending, running, sleeping, waiting, completed, failed or cancelled."""
        return self._state()[0]

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish: its output, or WorkflowFailed / RunCancelled.

        Raises TimeoutError after ``timeout`` seconds (None waits forever). Woken by
        LISTEN/NOTIFY when the run ends, with polling as the fallback.
        """
        ctx = current()
        if ctx is not None:
            result: R = ctx.sync_driver("handle.result").run(self._in_workflow(ctx, timeout))
            return result
        timeout, deadline = result_deadline(timeout, "result")
        status, output, error = self._state()
        if status in FINISHED:
            return outcome(self, status, output, error)
        wanted = str(self.run_id)
        with self.app.listening("listen_done") as conn:
            while True:
                status, output, error = self._state(conn)
                if status in FINISHED:
                    return outcome(self, status, output, error)
                wait = next_wait(self, status, timeout, deadline, "result")
                for note in conn.notifies(timeout=wait):
                    if note.payload == wanted:
                        break

    def cancel(self) -> str:
        """Cancel the run (and its unfinished children). Returns the status it ends up in:
        'cancelled', 'cancelling' (a worker will stop it at its next durable operation), or the
        final status of a run that had already finished."""
        with self.app.pool.connection() as conn:
            return str(call_sql(conn, "cancel_run", (self.run_id,)).fetchone()[0])

    def pause(self) -> str:
        """Pause the run: at once if it is pending, sleeping or waiting, else at its next durable
        operation (it then holds no worker). Returns 'paused', 'pausing' or the status of a run
        that has finished. ``resume()`` goes on from its last checkpoint."""
        with self.app.pool.connection() as conn:
            return str(call_sql(conn, "pause_run", (self.run_id,)).fetchone()[0])

    def resume(self) -> None:
        """Restart a failed, cancelled or paused run from its last checkpoint."""
        with self.app.pool.connection() as conn:
            call_sql(conn, "resume_run", (self.run_id,))

    def read_stream(
        self,
        key: str,
        start: int = 0,
        timeout: float | timedelta | None = None,
        *,
        poll_interval: float = 1.0,
    ) -> Iterator[Any]:
        """The values the run writes to its stream ``key``, from offset ``start``, as they are
        written (woken by NOTIFY); ends when the stream is closed or the run has ended and
        every value was read. Resumable: start again from the next offset after a disconnect.
        ``timeout``: seconds without a new value before TimeoutError (None: no limit)."""
        return read_stream(self.app, self.run_id, key, start, timeout, poll_interval=poll_interval)

    def steps(self) -> list[dict[str, Any]]:
        """The run's checkpoints, in order: one dict per completed durable operation."""
        with self.app.pool.connection() as conn:
            cur = conn.execute(Q["run_steps"], (self.run_id,))
            columns = [c.name for c in cur.description or ()]
            return decode_steps(columns, cur.fetchall(), self.run_id, self.app.limits)

    # --- async: the same operations, awaited -----------------------------------------------

    async def _state_async(self) -> tuple[str, Any, Any]:
        async with self.app.async_connection() as conn:
            cur = await conn.execute(Q["run_state"], (self.run_id,))
            return decode_state(await cur.fetchone(), self.run_id, self.app.limits)

    async def status_async(self) -> str:
        """``status()`` for asyncio code."""
        refuse_in_workflow("status_async")
        return (await self._state_async())[0]

    async def result_async(self, timeout: float | None = None) -> R:
        """``result()`` for asyncio code: the same outcome, exceptions and messages.

        Every wait of one event loop shares one LISTEN connection (not one each); each also
        re-reads its run every second, the fallback when notifications cannot arrive.
        """
        ctx = current()
        if ctx is not None:  # in an async workflow: result()'s durable wait
            plan = self._in_workflow(ctx, timeout)
            result: R = await ctx.async_driver("handle.result_async").run(plan)
            return result
        timeout, deadline = result_deadline(timeout, "result_async")
        status, output, error = await self._state_async()
        if status in FINISHED:
            return outcome(self, status, output, error)
        ready_within = POLL if deadline is None else min(POLL, deadline - time.monotonic())
        async with self.app.watch_done(self.run_id, ready_within) as woken:
            while True:
                woken.clear()
                status, output, error = await self._state_async()
                if status in FINISHED:
                    return outcome(self, status, output, error)
                wait = next_wait(self, status, timeout, deadline, "result_async")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), wait)

    async def cancel_async(self) -> str:
        """``cancel()`` for asyncio code."""
        refuse_in_workflow("cancel_async")
        async with self.app.async_connection() as conn:
            cur = await aq.call_sql(conn, "cancel_run", (self.run_id,))
            return str((await cur.fetchone())[0])

    async def pause_async(self) -> str:
        """``pause()`` for asyncio code."""
        refuse_in_workflow("pause_async")
        async with self.app.async_connection() as conn:
            cur = await aq.call_sql(conn, "pause_run", (self.run_id,))
            return str((await cur.fetchone())[0])

    async def resume_async(self) -> None:
        """``resume()`` for asyncio code."""
        refuse_in_workflow("resume_async")
        async with self.app.async_connection() as conn:
            await aq.call_sql(conn, "resume_run", (self.run_id,))

    def read_stream_async(
        self,
        key: str,
        start: int = 0,
        timeout: float | timedelta | None = None,
        *,
        poll_interval: float = 1.0,
    ) -> AsyncGenerator[Any, None]:
        """``read_stream()`` for asyncio code: ``async for value in handle.read_stream_async(
        key)``, the same values, ends and exceptions. Every reader of one event loop is woken
        by the loop's one LISTEN connection, and holds a pooled connection only for each read.
        ``await values.aclose()`` (or ``contextlib.aclosing``) disconnects at once.
        """
        refuse_in_workflow("read_stream_async")
        reading = Reading.checked(
            self.app.limits, self.run_id, key, start, timeout, poll_interval, "read_stream_async"
        )
        return self._read_async(reading)

    async def _read_async(self, reading: Reading) -> AsyncGenerator[Any, None]:
        # The LISTEN is in place (or known to be away: then the reader polls) before the first
        # read, so a value committed after a read is always noticed.
        ready = reading.poll if reading.timeout is None else min(reading.poll, reading.timeout)
        async with self.app.watch_stream(self.run_id, reading.payload, ready) as woken:
            while True:
                woken.clear()
                async with self.app.async_connection() as conn:
                    cur = await aq.call_sql(conn, "read_stream", reading.params())
                    rows = await cur.fetchall()
                for value in reading.values(rows):
                    yield value
                if reading.ended():
                    return
                wait = reading.wait()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(woken.wait(), wait)

    async def steps_async(self) -> list[dict[str, Any]]:
        """``steps()`` for asyncio code."""
        refuse_in_workflow("steps_async")
        async with self.app.async_connection() as conn:
            cur = await conn.execute(Q["run_steps"], (self.run_id,))
            columns = [c.name for c in cur.description or ()]
            return decode_steps(columns, await cur.fetchall(), self.run_id, self.app.limits)


def _run_state(conn: psycopg.Connection[Any], run_id: UUID) -> Any:
    return conn.execute(Q["run_state"], (run_id,)).fetchone()
