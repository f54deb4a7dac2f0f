"""How an attempt ends, as plans: completed runs aside, every way out of execution() (failed,
cancelled after its compensations, handed back, its connection lost) goes through here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

from . import _codec
from ._claims import Claim
from ._context import RunContext
from ._db import call_sql, describe, is_connection_error
from ._errors import Cancelled, LeaseLost
from ._ops import Blocking, ConnectionLost, Plan, Sql
from ._retry import Retry
from ._sagas import compensations_plan
from ._steps import step_plan

if TYPE_CHECKING:
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.executor")


def finish_cancel(ctx: RunContext, claim: Claim, exc: Cancelled) -> Plan[tuple[str, Any]]:
    if ctx.compensations:
        yield from compensations_plan(ctx)
    yield Sql("finish_cancel", (claim.run_id, claim.attempt))
    return "cancelled", exc


def workflow_failed(
    app: Runtime,
    ctx: RunContext,
    wf: Any,
    claim: Claim,
    exc: BaseException,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Plan[tuple[str, Any]]:
    if ctx.compensations:
        yield from compensations_plan(ctx)
    if wf.on_failure is not None:
        yield from _on_failure_plan(ctx, wf.on_failure, exc, {"args": args, "kwargs": kwargs})
    return (yield from fail(app, claim, exc))


def fail(app: Runtime, claim: Claim, exc: BaseException) -> Plan[tuple[str, Any]]:
    """End the run failed with ``exc``; if even its error cannot be stored, with a short one."""
    error = _codec.error_json(exc, app.limits)
    try:
        yield Sql("fail_run", (claim.run_id, claim.attempt, _codec.checked(error, "error")))
    except psycopg.Error as store_exc:
        if is_connection_error(store_exc):
            raise
        short = {
            "type": error["type"],
            "message": f"{str(error['message'])[:2000]} (the full error could not be stored: "
            f"{describe(store_exc)})",
            "traceback": None,
        }
        yield Sql("fail_run", (claim.run_id, claim.attempt, _codec.checked(short, "error")))
    return "failed", exc


def park(claim: Claim) -> Plan[tuple[str, Any]]:
    """A pause was requested: the run rests 'paused', holding no worker, until resumed."""
    yield Sql("park_run", (claim.run_id, claim.attempt))
    return "paused", None


def release(claim: Claim, reason: str, delay: float) -> Plan[tuple[str, Any]]:
    yield Sql("release_run", (claim.run_id, claim.attempt, reason, delay, False))
    return "released", None


def guarded(
    app: Runtime, claim: Claim, conn: Any, action: Plan[tuple[str, Any]]
) -> Plan[tuple[str, Any]]:
    """Carry out an engine call that ends the attempt; database errors get the usual
    treatment."""
    try:
        return (yield from action)
    except LeaseLost as exc:
        return "lost", exc
    except psycopg.Error as exc:
        return (yield from database_error(app, claim, conn, exc))


def database_error(
    app: Runtime, claim: Claim, conn: Any, exc: psycopg.Error
) -> Plan[tuple[str, Any]]:
    """A database error outside the workflow's control. A lost connection hands the run back
    (counted and backed off); a failed statement fails the run with the SQLSTATE and message."""
    if is_connection_error(exc, conn):
        log.warning(
            "run %s: database connection lost (%s); handing it back",
            claim.run_id,
            describe(exc),
            extra=claim.log_fields(error=describe(exc)),
        )
        yield ConnectionLost()
        yield Blocking(_release_after_disconnect, (app, claim, describe(exc)))
        return "released", exc
    log.error(
        "run %s: the engine rejected a statement: %s",
        claim.run_id,
        describe(exc),
        extra=claim.log_fields(error=describe(exc)),
    )
    try:
        return (yield from fail(app, claim, exc))
    except LeaseLost as lost:
        return "lost", lost
    except psycopg.Error as again:
        # Neither the run's error nor a short one could be written: let the lease lapse
        # rather than loop; the engine's recovery cap bounds what happens next.
        log.error("run %s: could not record its failure either: %s", claim.run_id, again)
        if is_connection_error(again, conn):
            yield ConnectionLost()
        return "released", again


def _on_failure_plan(
    ctx: RunContext, handler: Any, exc: BaseException, payload: dict[str, Any]
) -> Plan[None]:
    """The workflow's failure handler, run once as a durable step named 'on_failure'."""
    limits = ctx.app.limits
    rows = yield Sql("load_history", (ctx.run_id,), "all")
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
    policy = Retry(max_attempts=3, initial_delay=0.5)
    try:
        yield from step_plan(ctx, "step", "on_failure", policy, handler, (info,), {})
    except Exception as handler_exc:  # the run fails with its own error, not the handler's
        log.error("run %s: on_failure handler raised %r", ctx.run_id, handler_exc)


def _release_after_disconnect(app: Runtime, claim: Claim, why: str) -> None:
    """Hand the run back on a fresh connection, counting the disconnect; if the server is down
    the lease lapses instead, and a restart costs the run no recovery (see release_run)."""
    try:
        with psycopg.connect(app.dsn, **app.connection_kwargs, connect_timeout=5) as conn:
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
