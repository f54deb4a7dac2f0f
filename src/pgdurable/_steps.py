"""Durable operations inside a run: steps, transactions, sleeps, recorded values, children."""

from __future__ import annotations

import json
import logging
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from . import _codec
from ._context import Record, RunContext, Suspended, require
from ._db import call_sql, describe, is_connection_error
from ._durations import seconds
from ._errors import Cancelled, LeaseLost, NonRetryableError, SerializationError
from ._remote_errors import replay_error
from ._retry import Retry

log = logging.getLogger("pgdurable.executor")


def _sql(ctx: RunContext, name: str, params: tuple[Any, ...]) -> Any:
    return call_sql(ctx.conn, name, params)


def _replayed(rec: Record) -> Any:
    if rec.error is not None:
        raise replay_error(rec.error)
    return rec.output


def _record(
    ctx: RunContext,
    seq: int,
    key: str,
    kind: str,
    name: str,
    output: Any,
    error: dict[str, Any] | None = None,
    attempts: int = 1,
    started: datetime | None = None,
) -> None:
    err = None if error is None else _codec.checked(error, "error", ctx.app.limits)
    if ctx.compensating:
        # A failing or cancelled run undoing its work: allowed past a cancel request.
        _sql(
            ctx,
            "record_compensation",
            (ctx.run_id, ctx.attempt, seq, key, name, output, err, attempts),
        )
        return
    _sql(
        ctx,
        "record_checkpoint",
        (ctx.run_id, ctx.attempt, seq, key, kind, name, output, err, attempts, started),
    )


def _encode_result(ctx: RunContext, value: Any, kind: str, name: str) -> tuple[Any, Any]:
    """The JSON the checkpoint stores and the value the workflow sees (the same on replay)."""
    text = _codec.dumps(value, f"result of {kind} {name!r}", ctx.app.limits)
    return psycopg.types.json.Jsonb(value, dumps=lambda _v: text), json.loads(text)


def _attempts_so_far(ctx: RunContext, key: str) -> int:
    return ctx.retry_step_attempts if key == ctx.retry_step_key else 0


def _on_failure(
    ctx: RunContext,
    seq: int,
    key: str,
    kind: str,
    name: str,
    policy: Retry,
    attempts: int,
    exc: Exception,
    started: datetime,
) -> float | None:
    """Decide after a failed attempt: seconds to wait in place, or record/suspend and raise."""
    final = isinstance(exc, (NonRetryableError, SerializationError)) or policy.exhausted(attempts)
    error = _codec.error_json(exc, ctx.app.limits)
    if final:
        _record(ctx, seq, key, kind, name, None, error, attempts, started)
        raise exc
    delay = policy.delay(attempts)
    log.info(
        "step %s of run %s failed (attempt %s of %s), retrying in %.2f s: %s: %s",
        key,
        ctx.run_id,
        attempts,
        policy.max_attempts,
        delay,
        error["type"],
        str(error["message"])[:200],
        extra={
            "run_id": str(ctx.run_id),
            "workflow": ctx.workflow_name,
            "step": key,
            "attempt": attempts,
            "delay": round(delay, 3),
            "error": f"{error['type']}: {str(error['message'])[:500]}",
        },
    )
    if delay <= policy.inline_limit:
        return delay
    _sql(
        ctx,
        "schedule_retry",
        (
            ctx.run_id,
            ctx.attempt,
            key,
            attempts,
            delay,
            _codec.checked(error, "error", ctx.app.limits),
        ),
    )
    raise Suspended()


def run_step(
    ctx: RunContext,
    kind: str,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    seq, key, rec = ctx.next_op(kind, name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    attempts = _attempts_so_far(ctx, key)
    started = datetime.now(timezone.utc)
    while True:
        attempts += 1
        ctx.step_attempt += 1
        ctx.in_step = True
        try:
            value = fn(*args, **kwargs)
            stored, seen = _encode_result(ctx, value, kind, name)
        except Exception as exc:
            ctx.in_step = False
            _retry_wait(ctx, _on_failure(ctx, seq, key, kind, name, policy, attempts, exc, started))
            continue
        finally:
            ctx.in_step = False
        try:
            _record(ctx, seq, key, kind, name, stored, None, attempts, started)
        except psycopg.Error as exc:
            if is_connection_error(exc, ctx.conn):
                raise
            # The server refused to store the result (a limit, a full disk...): the step
            # failed, and its retry policy decides what happens next.
            failure = _StoreFailed(
                f"the result of {kind} {name!r} could not be stored: {describe(exc)}"
            )
            _retry_wait(
                ctx, _on_failure(ctx, seq, key, kind, name, policy, attempts, failure, started)
            )
            continue
        return seen


class _StoreFailed(Exception):
    """A step's result that the database refused to store (its error names the SQLSTATE)."""


def _retry_wait(ctx: RunContext, wait: float | None) -> None:
    if wait:
        time.sleep(wait)
    ctx.check_alive()


def run_transaction(
    ctx: RunContext,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    seq, key, rec = ctx.next_op("transaction", name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    attempts = _attempts_so_far(ctx, key)
    started = datetime.now(timezone.utc)
    conn = ctx.conn
    while True:
        attempts += 1
        ctx.step_attempt += 1
        try:
            with conn.transaction():
                ctx.in_step = True
                try:
                    value = fn(conn, *args, **kwargs)
                finally:
                    ctx.in_step = False
                stored, seen = _encode_result(ctx, value, "transaction", name)
                # The checkpoint commits with the application's writes, fenced by the run's
                # attempt: a worker that lost its lease rolls both back.
                _record(ctx, seq, key, "transaction", name, stored, None, attempts, started)
            return seen
        except (LeaseLost, Cancelled):
            raise
        except Exception as exc:
            if is_connection_error(exc, conn):
                raise
            _retry_wait(
                ctx,
                _on_failure(ctx, seq, key, "transaction", name, policy, attempts, exc, started),
            )


def sleep(duration: float | timedelta) -> None:
    """Sleep durably: the run leaves the worker and a timer wakes it, even days later."""
    secs = float(seconds(duration, "pgdurable.sleep() duration", allow_none=False) or 0.0)
    ctx = require("sleep")
    _sleep(ctx, secs, None)


def sleep_until(when: datetime) -> None:
    """Sleep durably until ``when`` (an aware datetime)."""
    if when.tzinfo is None:
        raise ValueError("pgdurable.sleep_until() needs an aware datetime (with tzinfo)")
    ctx = require("sleep_until")
    _sleep(ctx, 0.0, when)


def _sleep(ctx: RunContext, secs: float, until: datetime | None) -> None:
    seq, key, rec = ctx.next_op("sleep", "sleep")
    if rec is None:
        ctx.check_alive()
    row = _sql(ctx, "sleep_run", (ctx.run_id, ctx.attempt, seq, key, secs, until)).fetchone()
    if row[1]:
        raise Suspended()


def _value(kind_name: str, make: Callable[[], Any]) -> Any:
    ctx = require(kind_name)
    seq, key, rec = ctx.next_op("value", kind_name)
    if rec is not None:
        return rec.output
    ctx.check_alive()
    value = make()
    _record(ctx, seq, key, "value", kind_name, _codec.checked(value, kind_name, ctx.app.limits))
    return value


def now() -> datetime:
    """The current time, recorded: a replay returns the same value."""
    text = _value("now", lambda: datetime.now(timezone.utc).isoformat())
    return datetime.fromisoformat(text)


def random() -> float:
    """A random float in [0, 1), recorded: a replay returns the same value."""
    return float(_value("random", _random.random))


def uuid4() -> _uuid.UUID:
    """A random UUID, recorded: a replay returns the same value."""
    return _uuid.UUID(_value("uuid4", lambda: str(_uuid.uuid4())))
