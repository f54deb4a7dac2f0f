"""Executes one claimed run: replay, then new operations, then complete / fail / suspend."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from . import _codec
from ._context import Record, Released, RunContext, Suspended, _current
from ._errors import Cancelled, LeaseLost

if TYPE_CHECKING:
    from ._app import App
    from ._handle import RunHandle

log = logging.getLogger("pgdurable.executor")

# How long a run this worker cannot execute (unknown workflow) waits before it is claimable
# again, so that the workers that do know it get it first.
UNKNOWN_WORKFLOW_DELAY = 5.0


def _history(checkpoints: list[dict[str, Any]]) -> dict[int, Record]:
    return {
        c["seq"]: Record(c["seq"], c["key"], c["kind"], c["name"], c["output"], c["error"])
        for c in checkpoints
    }


def execute(
    app: App,
    row: tuple[Any, ...],
    conn: psycopg.Connection[Any],
    stop: threading.Event | None = None,
) -> tuple[str, Any]:
    """Run one claimed run to its next resting point. Returns (outcome, value or exception).

    Outcomes: completed, failed, suspended, cancelled, released, lost.
    """
    from ._app import call_sql

    (
        run_id,
        workflow_id,
        name,
        _queue,
        payload,
        attempt,
        _deadline,
        retry_key,
        retry_attempts,
        checkpoints,
        cancel_requested,
    ) = row
    wf = app.workflows.get(name)
    if wf is None:
        known = ", ".join(sorted(app.workflows)) or "none"
        reason = f"worker {app.worker_id} does not know workflow {name!r} (it knows: {known})"
        log.warning("handing back run %s: %s", run_id, reason)
        call_sql(conn, "release_run", (run_id, attempt, reason, UNKNOWN_WORKFLOW_DELAY))
        return "released", None
    ctx = RunContext(
        app=app,
        run_id=run_id,
        workflow_id=workflow_id,
        workflow_name=name,
        attempt=attempt,
        conn=conn,
        history=_history(checkpoints),
        retry_step_key=retry_key,
        retry_step_attempts=retry_attempts,
        stop_requested=stop,
        cancel_requested=bool(cancel_requested),
    )
    app.leases.add(ctx)
    token = _current.set(ctx)
    try:
        try:
            value = wf.fn(*payload.get("args", ()), **payload.get("kwargs", {}))
            output = _codec.checked(value, f"result of workflow {name!r}")
        except Cancelled as exc:
            _undo(ctx)
            call_sql(conn, "finish_cancel", (run_id, attempt))
            return "cancelled", exc
        except (Suspended, Released, LeaseLost, psycopg.OperationalError):
            raise
        except Exception as exc:
            _undo(ctx)
            if wf.on_failure is not None:
                _run_on_failure(ctx, wf.on_failure, payload, exc)
            call_sql(
                conn, "fail_run", (run_id, attempt, _codec.checked(_codec.error_json(exc), "error"))
            )
            return "failed", exc
        call_sql(conn, "complete_run", (run_id, attempt, output))
        return "completed", value
    except Suspended:
        return "suspended", None
    except LeaseLost as exc:
        log.warning("run %s: %s", run_id, exc)
        return "lost", exc
    except Released as rel:
        if rel.lost:
            return "lost", LeaseLost(f"run {run_id}: lease lost")
        call_sql(conn, "release_run", (run_id, attempt, rel.reason, 0.0))
        return "released", None
    except psycopg.OperationalError as exc:
        # The connection broke mid-run: hand the run back on a fresh connection so it is
        # replayed at once (steps at-least-once, transactions exactly-once); if that fails too,
        # its lease expires and any worker takes it over.
        log.warning("run %s: database connection lost (%s); handing it back", run_id, exc)
        _release_after_disconnect(app, run_id, attempt, str(exc))
        return "released", exc
    finally:
        _current.reset(token)
        app.leases.remove(ctx)


def _undo(ctx: RunContext) -> None:
    if ctx.compensations:
        from ._waiting import run_compensations

        run_compensations(ctx)


def _run_on_failure(
    ctx: RunContext, handler: Any, payload: dict[str, Any], exc: BaseException
) -> None:
    """The workflow's failure handler, run once as a durable step named 'on_failure'."""
    from ._app import call_sql
    from ._retry import Retry
    from ._steps import run_step

    rows = call_sql(ctx.conn, "run_steps", (ctx.run_id,)).fetchall()
    failed = next((r[1] for r in reversed(rows) if r[5] is not None), None)
    info = {
        "run_id": str(ctx.run_id),
        "workflow_id": ctx.workflow_id,
        "workflow_name": ctx.workflow_name,
        "failed_step": failed,
        "error": _codec.error_json(exc),
        "input": payload,
        "steps": {r[1]: r[4] for r in rows if r[5] is None and r[2] in ("step", "transaction")},
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


def _release_after_disconnect(app: App, run_id: UUID, attempt: int, why: str) -> None:
    from ._app import call_sql

    try:
        with psycopg.connect(app.dsn, autocommit=True, connect_timeout=5) as conn:
            call_sql(conn, "release_run", (run_id, attempt, f"connection lost: {why}", 0.0))
    except psycopg.Error as exc:
        log.warning("could not hand back run %s (%s); its lease will expire", run_id, exc)


def run_here(app: App, handle: RunHandle[Any]) -> Any:
    """Execute a just-started run in this process (a direct workflow call); if it suspends or
    another worker has it, wait for its result."""
    from ._app import call_sql

    with app.pool.connection() as conn:
        row = call_sql(conn, "claim_run", (handle.run_id, app.worker_id, app.lease)).fetchone()
        if row is not None:
            outcome, value = execute(app, row, conn)
            if outcome == "completed":
                return value
            if outcome == "failed":
                raise value
    return handle.result()
