"""Executes one claimed run: replay, then new operations, then complete / fail / suspend.

A run can only hurt itself: whatever its data or code raises (undecodable input, a step result
too large to store, RecursionError, MemoryError, a statement the server rejects) ends in that
run failing or being retried with the error recorded. Only a lost connection hands it back,
counted and backed off by the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import _async_queries as aq
from . import _codec, _telemetry, _tracing
from ._claims import Claim
from ._context import Record, Released, RunContext, Suspended, _current
from ._db import call_sql, is_connection_error
from ._drive import AsyncDriver, SyncDriver
from ._endings import (
    database_error,
    fail,
    finish_cancel,
    guarded,
    park,
    release,
    workflow_failed,
)
from ._errors import Cancelled, LeaseLost, SerializationError
from ._ops import Invoke, Plan, Sql

if TYPE_CHECKING:
    from ._handle import RunHandle
    from ._leases import Held
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.executor")

# How long a run this worker cannot execute (unknown workflow) waits before it is claimable
# again, so that the workers that do know it get it first.
UNKNOWN_WORKFLOW_DELAY = 5.0


def execute(
    app: Runtime,
    row: tuple[Any, ...],
    conn: psycopg.Connection[Any],
    stop: threading.Event | None = None,
    held: Held | None = None,
) -> tuple[str, Any]:
    """Run one claimed run to its next resting point on a sync connection, in this thread.
    Returns (outcome, value or exception).

    Outcomes: completed, failed, suspended, cancelled, released, lost.
    """
    claim = Claim.from_row(row)
    if held is None:
        held = app.leases.hold(claim.run_id, claim.attempt, bool(claim.cancel_requested))
    try:
        driver = SyncDriver(conn, app.connection_lost)
        outcome, value = driver.run(_observed(execution(app, claim, driver, stop, held), claim))
    finally:
        app.leases.release(held)
    _log_outcome(claim, outcome, value)
    return outcome, value


async def execute_async(
    app: Runtime,
    row: tuple[Any, ...],
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | _Pinned,
    stop: threading.Event | None = None,
    held: Held | None = None,
    on_lost: Callable[[], Awaitable[None]] | None = None,
) -> tuple[str, Any]:
    """``execute()`` for an async workflow: the run's operations are awaited in the calling
    task, each on a connection of ``pool``. The same plan, so the same outcomes for the same
    events."""
    claim = Claim.from_row(row)
    if held is None:
        held = app.leases.hold(claim.run_id, claim.attempt, bool(claim.cancel_requested))
    try:
        driver = AsyncDriver(pool, on_lost)
        plan = _observed(execution(app, claim, driver, stop, held), claim)
        outcome, value = await driver.run(plan)
    finally:
        app.leases.release(held)
    _log_outcome(claim, outcome, value)
    return outcome, value


def _observed(plan: Plan[tuple[str, Any]], claim: Claim) -> Plan[tuple[str, Any]]:
    """The attempt's plan, seen by metrics and tracing when they are on (_telemetry.py)."""
    obs = _telemetry.observer
    return plan if obs is None else _telemetry.observed_attempt(obs, claim, plan)


def _log_outcome(claim: Claim, outcome: str, value: Any) -> None:
    if log.isEnabledFor(logging.INFO):  # the fields are built per run: only when logged
        error = _safe_repr(value) if isinstance(value, BaseException) else None
        log.info(
            "run %s (%s) %s",
            claim.run_id,
            claim.workflow_name,
            outcome,
            extra=claim.log_fields(outcome=outcome, error=error),
        )


def execution(
    app: Runtime,
    claim: Claim,
    driver: Any,
    stop: threading.Event | None,
    held: Held,
) -> Plan[tuple[str, Any]]:
    """The life of one claimed attempt, as a plan: decode, replay and run the workflow, then
    complete, fail, suspend, cancel or hand back."""
    conn = driver.conn
    wf = app.workflows.get(claim.workflow_name)
    if wf is None:
        known = ", ".join(sorted(app.workflows)) or "none"
        reason = (
            f"worker {app.worker_id} does not know workflow {claim.workflow_name!r} "
            f"(it knows: {known})"
        )
        log.warning("handing back run %s: %s", claim.run_id, reason, extra=claim.log_fields())
        ending = release(claim, reason, UNKNOWN_WORKFLOW_DELAY)
        return (yield from guarded(app, claim, conn, ending))
    if log.isEnabledFor(logging.INFO):
        log.info(
            "run %s (%s) claimed, attempt %s",
            claim.run_id,
            claim.workflow_name,
            claim.attempt,
            extra=claim.log_fields(worker_id=app.worker_id),
        )
    try:
        args, kwargs = _decode_input(app, claim)
        history = (yield from _load_history(app, claim)) if claim.has_history else {}
    except SerializationError as exc:
        # The run's stored data cannot be used: retrying cannot help, the run fails alone.
        return (yield from guarded(app, claim, conn, fail(app, claim, exc)))
    except psycopg.Error as exc:
        return (yield from database_error(app, claim, conn, exc))
    ctx = RunContext(
        app=app,
        run_id=claim.run_id,
        workflow_id=claim.workflow_id,
        workflow_name=claim.workflow_name,
        attempt=claim.attempt,
        conn=conn,
        history=history,
        held=held,
        driver=driver,
        retry_step_key=claim.retry_step_key,
        retry_step_attempts=claim.retry_step_attempts,
        stop_requested=stop,
    )
    token = _current.set(ctx)
    try:
        try:
            value = yield Invoke(wf.fn, tuple(args), kwargs, f"workflow {claim.workflow_name!r}")
            output = _codec.checked(
                value, f"result of workflow {claim.workflow_name!r}", app.limits
            )
        except Cancelled as exc:
            return (yield from finish_cancel(ctx, claim, exc))
        except (Suspended, Released, LeaseLost):
            raise
        except psycopg.Error as exc:
            if is_connection_error(exc, conn):
                raise
            return (yield from workflow_failed(app, ctx, wf, claim, exc, args, kwargs))
        except Exception as exc:
            return (yield from workflow_failed(app, ctx, wf, claim, exc, args, kwargs))
        yield Sql("complete_run", (claim.run_id, claim.attempt, output))
        return "completed", value
    except Suspended:
        return "suspended", None
    except Cancelled as exc:
        # cancelled after its last durable operation: complete_run refused (PD005)
        return (yield from guarded(app, claim, conn, finish_cancel(ctx, claim, exc)))
    except LeaseLost as exc:
        log.warning("run %s: %s", claim.run_id, exc, extra=claim.log_fields())
        return "lost", exc
    except Released as rel:
        if rel.lost:
            return "lost", LeaseLost(f"run {claim.run_id}: lease lost")
        if rel.park:
            return (yield from guarded(app, claim, conn, park(claim)))
        return (yield from guarded(app, claim, conn, release(claim, rel.reason, 0.0)))
    except asyncio.CancelledError:
        # The run's task was cancelled (its worker's loop is shutting down): hand the run back
        # like a stopping worker does, then let the cancellation go on.
        yield from guarded(app, claim, conn, release(claim, "worker task cancelled", 0.0))
        raise
    except psycopg.Error as exc:
        return (yield from database_error(app, claim, conn, exc))
    except Exception as exc:  # the engine's own bookkeeping failed on this run's data
        return (yield from guarded(app, claim, conn, fail(app, claim, exc)))
    finally:
        _current.reset(token)


def _safe_repr(exc: BaseException) -> str:
    try:
        return repr(exc)[:500]
    except Exception:  # a user's __repr__ may raise: the log line must not
        return f"<{type(exc).__qualname__} whose repr() raised>"


def _decode_input(app: Runtime, claim: Claim) -> tuple[list[Any], dict[str, Any]]:
    what = f"input of run {claim.run_id} (workflow {claim.workflow_name})"
    payload = _codec.loads(claim.input_text, what, app.limits)
    args = payload.get("args", []) if isinstance(payload, dict) else None
    kwargs = payload.get("kwargs", {}) if isinstance(payload, dict) else None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError(f"{what} is not an object {{'args': [...], 'kwargs': {{...}}}}")
    return args, kwargs


def _load_history(app: Runtime, claim: Claim) -> Plan[dict[int, Record]]:
    """The run's checkpoints, loaded as rows and decoded one by one with the App's limits."""
    history = {}
    rows = yield Sql("load_history", (claim.run_id,), "all")
    for seq, key, kind, name, output, error in rows:
        what = f"checkpoint {key!r} of run {claim.run_id}"
        history[seq] = Record(
            seq,
            key,
            kind,
            name,
            _codec.loads(output, f"output of {what}", app.limits),
            _codec.loads(error, f"error of {what}", app.limits),
        )
    return history


def run_here(app: Runtime, handle: RunHandle[Any]) -> Any:
    """Execute a just-started run in this process (a direct workflow call); if it suspends or
    another worker has it, wait for its result."""
    _tracing.ensure_installed()
    with app.pool.connection() as conn:
        row = call_sql(conn, "claim_run", (handle.run_id, app.worker_id, app.lease)).fetchone()
        if row is not None:
            outcome, value = execute(app, row, conn)
            if outcome == "completed":
                return value
            if outcome == "failed":
                raise value
    return handle.result()


async def run_here_async(app: Runtime, handle: RunHandle[Any]) -> Any:
    """``run_here()`` for an async workflow called directly (``await wf(...)``), on the App's
    async pool."""
    _tracing.ensure_installed()
    pool = await app.async_pool()
    async with pool.connection() as conn:
        cur = await aq.call_sql(conn, "claim_run", (handle.run_id, app.worker_id, app.lease))
        row = await cur.fetchone()
        if row is not None:
            # One checked-out connection for the whole run, as a sync direct call holds one:
            # the App's pool pings each connection it hands out, once per checkout.
            outcome, value = await execute_async(app, row, _Pinned(conn), on_lost=pool.check)
            if outcome == "completed":
                return value
            if outcome == "failed":
                raise value
    return await handle.result_async()


class _Pinned:
    """A pool of one connection, already checked out: what execute_async() needs of a pool."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def connection(
        self, timeout: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        yield self.conn
