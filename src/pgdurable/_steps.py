"""Durable operations inside a run, as plans (_ops.py): steps, transaction steps, sleeps and
recorded values, each with its sync call and its ``_async`` twin (which differ only in the
driver that carries the plan out)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random as _random
import uuid as _uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from . import _codec, _telemetry
from ._context import Record, RunContext, Suspended, require
from ._db import describe, is_connection_error
from ._durations import seconds
from ._errors import Cancelled, LeaseLost, NonRetryableError, SerializationError
from ._ops import Atomic, Invoke, Pause, Plan, Sql
from ._remote_errors import replay_error
from ._retry import Retry

log = logging.getLogger("pgdurable.executor")


def _replayed(rec: Record) -> Any:
    if rec.error is not None:
        raise replay_error(rec.error)
    return rec.output


def record(
    ctx: RunContext,
    seq: int,
    key: str,
    kind: str,
    name: str,
    output: Any,
    error: dict[str, Any] | None = None,
    attempts: int = 1,
    started: datetime | None = None,
) -> Sql:
    """The request that stores one checkpoint, fenced by the run's attempt."""
    err = None if error is None else _codec.checked(error, "error", ctx.app.limits)
    if ctx.compensating:
        # A failing or cancelled run undoing its work: allowed past a cancel request.
        return Sql(
            "record_compensation",
            (ctx.run_id, ctx.attempt, seq, key, name, output, err, attempts),
        )
    return Sql(
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
) -> Plan[None]:
    """After a failed attempt: wait in place and return, or record / suspend and raise."""
    final = isinstance(exc, (NonRetryableError, SerializationError)) or policy.exhausted(attempts)
    error = _codec.error_json(exc, ctx.app.limits)
    if final:
        yield record(ctx, seq, key, kind, name, None, error, attempts, started)
        raise exc
    delay = policy.delay(attempts)
    if log.isEnabledFor(logging.INFO):
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
    obs = _telemetry.observer
    if obs is not None:
        obs.step_retried(ctx, name, key, attempts, exc, delay)
    if delay > policy.inline_limit:
        checked = _codec.checked(error, "error", ctx.app.limits)
        yield Sql("schedule_retry", (ctx.run_id, ctx.attempt, key, attempts, delay, checked))
        raise Suspended()
    if delay:
        yield Pause(delay)
    ctx.check_alive()


def step_plan(
    ctx: RunContext,
    kind: str,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Plan[Any]:
    """A step: replayed from its checkpoint, or called (retried per ``policy``) and recorded."""
    seq, key, rec = ctx.next_op(kind, name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    body = _step_calls(ctx, seq, key, kind, name, policy, fn, args, kwargs)
    return (yield from _telemetry.seen_step(ctx, kind, name, key, body))


def _step_calls(
    ctx: RunContext,
    seq: int,
    key: str,
    kind: str,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Plan[Any]:
    """A step's calls (retried per ``policy``) and its checkpoint."""
    attempts = _attempts_so_far(ctx, key)
    started = datetime.now(timezone.utc)
    what = f"{kind} {name!r}"
    while True:
        attempts += 1
        ctx.step_attempt += 1
        ctx.in_step = True
        try:
            value = yield Invoke(fn, args, kwargs, what)
            stored, seen = _encode_result(ctx, value, kind, name)
        except Exception as exc:
            ctx.in_step = False
            yield from _on_failure(ctx, seq, key, kind, name, policy, attempts, exc, started)
            continue
        finally:
            ctx.in_step = False
        try:
            yield record(ctx, seq, key, kind, name, stored, None, attempts, started)
        except psycopg.Error as exc:
            if is_connection_error(exc, ctx.conn):
                raise
            # The server refused to store the result (a limit, a full disk...): the step
            # failed, and its retry policy decides what happens next.
            failure = _StoreFailed(f"the result of {what} could not be stored: {describe(exc)}")
            yield from _on_failure(ctx, seq, key, kind, name, policy, attempts, failure, started)
            continue
        return seen


class _StoreFailed(Exception):
    """A step's result that the database refused to store (its error names the SQLSTATE)."""


def _transaction_body(
    ctx: RunContext,
    seq: int,
    key: str,
    name: str,
    attempts: int,
    started: datetime,
    call: Invoke,
) -> Plan[Any]:
    ctx.in_step = True
    try:
        value = yield call
    finally:
        ctx.in_step = False
    stored, seen = _encode_result(ctx, value, "transaction", name)
    # The checkpoint commits with the application's writes, fenced by the run's attempt: a
    # worker that lost its lease rolls both back. Sent with the COMMIT in one round trip.
    checkpoint = record(ctx, seq, key, "transaction", name, stored, None, attempts, started)
    yield dataclasses.replace(checkpoint, commits=True)
    return seen


def transaction_plan(
    ctx: RunContext,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Plan[Any]:
    """A transaction step: the user's writes and the checkpoint in one transaction."""
    seq, key, rec = ctx.next_op("transaction", name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    body = _transaction_tries(ctx, seq, key, name, policy, fn, args, kwargs)
    return (yield from _telemetry.seen_step(ctx, "transaction", name, key, body))


def _transaction_tries(
    ctx: RunContext,
    seq: int,
    key: str,
    name: str,
    policy: Retry,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Plan[Any]:
    """A transaction step's tries (retried per ``policy``), each one database transaction."""
    attempts = _attempts_so_far(ctx, key)
    started = datetime.now(timezone.utc)
    call = Invoke(fn, args, kwargs, f"transaction {name!r}", with_conn=True)
    while True:
        attempts += 1
        ctx.step_attempt += 1
        try:
            body = _transaction_body(ctx, seq, key, name, attempts, started, call)
            return (yield Atomic(body))
        except (LeaseLost, Cancelled):
            raise
        except Exception as exc:
            if is_connection_error(exc, ctx.conn):
                raise
            yield from _on_failure(
                ctx, seq, key, "transaction", name, policy, attempts, exc, started
            )


def _sleep_seconds(duration: float | timedelta, what: str) -> float:
    return float(seconds(duration, f"{what}() duration", allow_none=False) or 0.0)


def _aware(when: datetime, what: str) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValueError(f"{what}() needs an aware datetime (with tzinfo), got {when!r}")
    return when


def sleep_plan(ctx: RunContext, secs: float, until: datetime | None) -> Plan[None]:
    seq, key, rec = ctx.next_op("sleep", "sleep")
    if rec is None:
        ctx.check_alive()
    row = yield Sql("sleep_run", (ctx.run_id, ctx.attempt, seq, key, secs, until), "one")
    if row[1]:
        raise Suspended()


def sleep(duration: float | timedelta) -> None:
    """Sleep durably: the run leaves the worker and a timer wakes it, even days later."""
    secs = _sleep_seconds(duration, "pgdurable.sleep")
    ctx = require("sleep")
    ctx.sync_driver("pgdurable.sleep").run(sleep_plan(ctx, secs, None))


async def sleep_async(duration: float | timedelta) -> None:
    """``sleep()`` in an async workflow: ``await pgdurable.sleep_async(timedelta(days=3))``."""
    secs = _sleep_seconds(duration, "pgdurable.sleep_async")
    ctx = require("sleep_async")
    await ctx.async_driver("pgdurable.sleep_async").run(sleep_plan(ctx, secs, None))


def sleep_until(when: datetime) -> None:
    """Sleep durably until ``when`` (an aware datetime)."""
    _aware(when, "pgdurable.sleep_until")
    ctx = require("sleep_until")
    ctx.sync_driver("pgdurable.sleep_until").run(sleep_plan(ctx, 0.0, when))


async def sleep_until_async(when: datetime) -> None:
    """``sleep_until()`` in an async workflow."""
    _aware(when, "pgdurable.sleep_until_async")
    ctx = require("sleep_until_async")
    await ctx.async_driver("pgdurable.sleep_until_async").run(sleep_plan(ctx, 0.0, when))


def _value_plan(ctx: RunContext, kind_name: str, make: Callable[[], Any]) -> Plan[Any]:
    seq, key, rec = ctx.next_op("value", kind_name)
    if rec is not None:
        return rec.output
    ctx.check_alive()
    value = make()
    yield record(
        ctx, seq, key, "value", kind_name, _codec.checked(value, kind_name, ctx.app.limits)
    )
    return value


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat()


def _uuid_text() -> str:
    return str(_uuid.uuid4())


def now() -> datetime:
    """The current time, recorded: a replay returns the same value."""
    ctx = require("now")
    driver = ctx.sync_driver("pgdurable.now")
    return datetime.fromisoformat(driver.run(_value_plan(ctx, "now", _now_text)))


async def now_async() -> datetime:
    """``now()`` in an async workflow."""
    ctx = require("now_async")
    driver = ctx.async_driver("pgdurable.now_async")
    return datetime.fromisoformat(await driver.run(_value_plan(ctx, "now", _now_text)))


def random() -> float:
    """A random float in [0, 1), recorded: a replay returns the same value."""
    ctx = require("random")
    return float(ctx.sync_driver("pgdurable.random").run(_value_plan(ctx, "random", _rand)))


async def random_async() -> float:
    """``random()`` in an async workflow."""
    ctx = require("random_async")
    driver = ctx.async_driver("pgdurable.random_async")
    return float(await driver.run(_value_plan(ctx, "random", _rand)))


def uuid4() -> _uuid.UUID:
    """A random UUID, recorded: a replay returns the same value."""
    ctx = require("uuid4")
    return _uuid.UUID(ctx.sync_driver("pgdurable.uuid4").run(_value_plan(ctx, "uuid4", _uuid_text)))


async def uuid4_async() -> _uuid.UUID:
    """``uuid4()`` in an async workflow."""
    ctx = require("uuid4_async")
    driver = ctx.async_driver("pgdurable.uuid4_async")
    return _uuid.UUID(await driver.run(_value_plan(ctx, "uuid4", _uuid_text)))


_rand = _random.random
