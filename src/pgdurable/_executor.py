"""Executes one claimed run: replay, then new operations, then complete / fail / suspend.

A run can only hurt itself: whatever its data or code raises (undecodable input, a step result
too large to store, RecursionError, MemoryError, a statement the server rejects) ends in that
run failing or being retried with the error recorded. Only a lost connection hands it back,
counted and backed off by the engine.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from . import _codec
from ._context import Record, Released, RunContext, Suspended, _current
from ._db import call_sql, describe, is_connection_error
from ._errors import Cancelled, LeaseLost, SerializationError
from ._retry import Retry
from ._steps import run_step
from ._waiting import run_compensations

if TYPE_CHECKING:
    from ._handle import RunHandle
    from ._leases import Held
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.executor")

# How long a run this worker cannot execute (unknown workflow) waits before it is claimable
# again, so that the workers that do know it get it first.
UNKNOWN_WORKFLOW_DELAY = 5.0


@dataclass(frozen=True)
class Claim:
    """One row of claim_runs / claim_run; the input is still JSON text, decoded per run."""

    run_id: UUID
    workflow_id: str
    workflow_name: str
    queue: str
    input_text: str
    attempt: int
    retry_step_key: str | None
    retry_step_attempts: int
    has_history: bool
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Claim:
        (run_id, workflow_id, name, queue, text, attempt, _deadline, key, tries, hist, cancel) = row
        return cls(run_id, workflow_id, name, queue, text, attempt, key, tries, hist, cancel)

    def log_fields(self, **more: Any) -> dict[str, Any]:
        fields = {
            "run_id": str(self.run_id),
            "workflow_id": self.workflow_id,
            "workflow": self.workflow_name,
            "queue": self.queue,
            "attempt": self.attempt,
        }
        fields.update(more)
        return fields


def execute(
    app: Runtime,
    row: tuple[Any, ...],
    conn: psycopg.Connection[Any],
    stop: threading.Event | None = None,
    held: Held | None = None,
) -> tuple[str, Any]:
    """Run one claimed run to its next resting point. Returns (outcome, value or exception).

    Outcomes: completed, failed, suspended, cancelled, released, lost.
    """
    claim = Claim.from_row(row)
    if held is None:
        held = app.leases.hold(claim.run_id, claim.attempt, bool(claim.cancel_requested))
    try:
        outcome, value = _execute(app, claim, conn, stop, held)
    finally:
        app.leases.release(held)
    if log.isEnabledFor(logging.INFO):  # the fields are built per run: only when logged
        error = _safe_repr(value) if isinstance(value, BaseException) else None
        log.info(
            "run %s (%s) %s",
            claim.run_id,
            claim.workflow_name,
            outcome,
            extra=claim.log_fields(outcome=outcome, error=error),
        )
    return outcome, value


def _execute(
    app: Runtime,
    claim: Claim,
    conn: psycopg.Connection[Any],
    stop: threading.Event | None,
    held: Held,
) -> tuple[str, Any]:
    wf = app.workflows.get(claim.workflow_name)
    if wf is None:
        known = ", ".join(sorted(app.workflows)) or "none"
        reason = (
            f"worker {app.worker_id} does not know workflow {claim.workflow_name!r} "
            f"(it knows: {known})"
        )
        log.warning("handing back run %s: %s", claim.run_id, reason, extra=claim.log_fields())
        return _guarded(app, claim, conn, _release, conn, claim, reason, UNKNOWN_WORKFLOW_DELAY)
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
        history = _load_history(app, conn, claim) if claim.has_history else {}
    except SerializationError as exc:
        # The run's stored data cannot be used: retrying cannot help, the run fails alone.
        return _guarded(app, claim, conn, _fail, app, conn, claim, exc)
    except psycopg.Error as exc:
        return _database_error(app, claim, conn, exc)
    ctx = RunContext(
        app=app,
        run_id=claim.run_id,
        workflow_id=claim.workflow_id,
        workflow_name=claim.workflow_name,
        attempt=claim.attempt,
        conn=conn,
        history=history,
        held=held,
        retry_step_key=claim.retry_step_key,
        retry_step_attempts=claim.retry_step_attempts,
        stop_requested=stop,
    )
    token = _current.set(ctx)
    try:
        try:
            value = wf.fn(*args, **kwargs)
            output = _codec.checked(
                value, f"result of workflow {claim.workflow_name!r}", app.limits
            )
        except Cancelled as exc:
            return _finish_cancel(ctx, claim, exc)
        except (Suspended, Released, LeaseLost):
            raise
        except psycopg.Error as exc:
            if is_connection_error(exc, conn):
                raise
            return _workflow_failed(app, ctx, wf, claim, exc, args, kwargs)
        except Exception as exc:
            return _workflow_failed(app, ctx, wf, claim, exc, args, kwargs)
        call_sql(conn, "complete_run", (claim.run_id, claim.attempt, output))
        return "completed", value
    except Suspended:
        return "suspended", None
    except Cancelled as exc:
        # cancelled after its last durable operation: complete_run refused (PD005)
        return _guarded(app, claim, conn, _finish_cancel, ctx, claim, exc)
    except LeaseLost as exc:
        log.warning("run %s: %s", claim.run_id, exc, extra=claim.log_fields())
        return "lost", exc
    except Released as rel:
        if rel.lost:
            return "lost", LeaseLost(f"run {claim.run_id}: lease lost")
        return _guarded(app, claim, conn, _release, conn, claim, rel.reason, 0.0)
    except psycopg.Error as exc:
        return _database_error(app, claim, conn, exc)
    except Exception as exc:  # the engine's own bookkeeping failed on this run's data
        return _guarded(app, claim, conn, _fail, app, conn, claim, exc)
    finally:
        _current.reset(token)


def _safe_repr(exc: BaseException) -> str:
    try:
        return repr(exc)[:500]
    except Exception:  # a user's __repr__ may raise: the log line must not
        return f"<{type(exc).__qualname__} whose repr() raised>"


def _finish_cancel(ctx: RunContext, claim: Claim, exc: Cancelled) -> tuple[str, Any]:
    _undo(ctx)
    call_sql(ctx.conn, "finish_cancel", (claim.run_id, claim.attempt))
    return "cancelled", exc


def _decode_input(app: Runtime, claim: Claim) -> tuple[list[Any], dict[str, Any]]:
    what = f"input of run {claim.run_id} (workflow {claim.workflow_name})"
    payload = _codec.loads(claim.input_text, what, app.limits)
    args = payload.get("args", []) if isinstance(payload, dict) else None
    kwargs = payload.get("kwargs", {}) if isinstance(payload, dict) else None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError(f"{what} is not an object {{'args': [...], 'kwargs': {{...}}}}")
    return args, kwargs


def _load_history(app: Runtime, conn: psycopg.Connection[Any], claim: Claim) -> dict[int, Record]:
    """The run's checkpoints, loaded as rows and decoded one by one with the App's limits."""
    history = {}
    for seq, key, kind, name, output, error in call_sql(conn, "load_history", (claim.run_id,)):
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


def _workflow_failed(
    app: Runtime,
    ctx: RunContext,
    wf: Any,
    claim: Claim,
    exc: BaseException,
    args: list[Any],
    kwargs: dict[str, Any],
) -> tuple[str, Any]:
    _undo(ctx)
    if wf.on_failure is not None:
        _run_on_failure(ctx, wf.on_failure, exc, {"args": args, "kwargs": kwargs})
    return _fail(app, ctx.conn, claim, exc)


def _fail(
    app: Runtime, conn: psycopg.Connection[Any], claim: Claim, exc: BaseException
) -> tuple[str, Any]:
    """End the run failed with ``exc``; if even its error cannot be stored, with a short one."""
    error = _codec.error_json(exc, app.limits)
    try:
        call_sql(conn, "fail_run", (claim.run_id, claim.attempt, _codec.checked(error, "error")))
    except psycopg.Error as store_exc:
        if is_connection_error(store_exc, conn):
            raise
        short = {
            "type": error["type"],
            "message": f"{str(error['message'])[:2000]} (the full error could not be stored: "
            f"{describe(store_exc)})",
            "traceback": None,
        }
        call_sql(conn, "fail_run", (claim.run_id, claim.attempt, _codec.checked(short, "error")))
    return "failed", exc


def _release(
    conn: psycopg.Connection[Any], claim: Claim, reason: str, delay: float
) -> tuple[str, Any]:
    call_sql(conn, "release_run", (claim.run_id, claim.attempt, reason, delay, False))
    return "released", None


def _guarded(
    app: Runtime, claim: Claim, conn: psycopg.Connection[Any], action: Any, *args: Any
) -> tuple[str, Any]:
    """Run an engine call that ends the attempt; database errors get the usual treatment."""
    try:
        result: tuple[str, Any] = action(*args)
        return result
    except LeaseLost as exc:
        return "lost", exc
    except psycopg.Error as exc:
        return _database_error(app, claim, conn, exc)


def _database_error(
    app: Runtime, claim: Claim, conn: psycopg.Connection[Any], exc: psycopg.Error
) -> tuple[str, Any]:
    """A database error outside the workflow's control. A lost connection hands the run back
    (counted and backed off); a failed statement fails the run with the SQLSTATE and message."""
    if is_connection_error(exc, conn):
        log.warning(
            "run %s: database connection lost (%s); handing it back",
            claim.run_id,
            describe(exc),
            extra=claim.log_fields(error=describe(exc)),
        )
        app.connection_lost()
        _release_after_disconnect(app, claim, describe(exc))
        return "released", exc
    log.error(
        "run %s: the engine rejected a statement: %s",
        claim.run_id,
        describe(exc),
        extra=claim.log_fields(error=describe(exc)),
    )
    try:
        return _fail(app, conn, claim, exc)
    except LeaseLost as lost:
        return "lost", lost
    except psycopg.Error as again:
        # Neither the run's error nor a short one could be written: let the lease lapse
        # rather than loop; the engine's recovery cap bounds what happens next.
        log.error("run %s: could not record its failure either: %s", claim.run_id, again)
        if is_connection_error(again, conn):
            app.connection_lost()
        return "released", again


def _undo(ctx: RunContext) -> None:
    if ctx.compensations:
        run_compensations(ctx)


def _run_on_failure(
    ctx: RunContext, handler: Any, exc: BaseException, payload: dict[str, Any]
) -> None:
    """The workflow's failure handler, run once as a durable step named 'on_failure'."""
    limits = ctx.app.limits
    rows = call_sql(ctx.conn, "load_history", (ctx.run_id,)).fetchall()
    failed = next((r[1] for r in reversed(rows) if r[5] is not None), None)
    info = {
        "run_id": str(ctx.run_id),
        "workflow_id": ctx.workflow_id,
        "workflow_name": ctx.workflow_name,
        "failed_step": failed,
        "error": _codec.error_json(exc, limits),
        "input": payload,
        "steps": {
            r[1]: _codec.loads(r[4], f"output of {r[1]}", limits)
            for r in rows
            if r[5] is None and r[2] in ("step", "transaction")
        },
    }
    ctx.compensating = True
    try:
        run_step(
            ctx,
            "step",
            "on_failure",
            Retry(max_attempts=3, initial_delay=0.5),
            handler,
            (info,),
            {},
        )
    except Exception as handler_exc:  # the run fails with its own error, not the handler's
        log.error("run %s: on_failure handler raised %r", ctx.run_id, handler_exc)


def _release_after_disconnect(app: Runtime, claim: Claim, why: str) -> None:
    """Hand the run back on a fresh connection, counting the disconnect; if the server is down
    the lease lapses instead, and a restart costs the run no recovery (see release_run)."""
    try:
        with psycopg.connect(app.dsn, autocommit=True, connect_timeout=5) as conn:
            call_sql(
                conn,
                "release_run",
                (claim.run_id, claim.attempt, f"connection lost: {why}", 0.0, True),
            )
    except psycopg.Error as exc:
        log.warning(
            "could not hand back run %s (%s); its lease will expire",
            claim.run_id,
            describe(exc),
            extra=claim.log_fields(),
        )


def run_here(app: Runtime, handle: RunHandle[Any]) -> Any:
    """Execute a just-started run in this process (a direct workflow call); if it suspends or
    another worker has it, wait for its result."""
    with app.pool.connection() as conn:
        row = call_sql(conn, "claim_run", (handle.run_id, app.worker_id, app.lease)).fetchone()
        if row is not None:
            outcome, value = execute(app, row, conn)
            if outcome == "completed":
                return value
            if outcome == "failed":
                raise value
    return handle.result()
