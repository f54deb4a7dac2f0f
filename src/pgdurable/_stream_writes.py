"""Writing durable streams from inside a run, sync and async.

A write from workflow code is a durable operation (a checkpoint of kind 'stream', recorded with
the value in one statement), so a replay sends nothing. A write from a step or transaction step
carries its origin, ``<position of the step>:<n>`` (its n-th stream write in this attempt): a
retried or replayed step rewrites the same origins, which the engine recognises and skips. A
transaction step's writes commit or roll back with it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from . import _async_queries as aq
from . import _codec
from ._context import RunContext, _current
from ._db import call_sql
from ._errors import NotInWorkflow
from ._ops import Plan, Sql
from ._streams import check_key


def write_stream(key: str, value: Any, *, conn: psycopg.Connection[Any] | None = None) -> int:
    """Append ``value`` (JSON) to this run's stream ``key`` and wake its readers; returns its
    offset (0, 1, 2 ...).

    In workflow code the write is a durable operation: a replay never writes it again. In a
    step it is at-least-once like the step, yet never duplicated: a retry's n-th write is the
    first attempt's n-th value. In a transaction step it commits or rolls back with the
    step's transaction (``conn``, the connection the transaction step receives, is used by
    default; pass another connection to write in that connection's transaction instead).
    """
    ctx = _run_context("write_stream", key)
    body = _codec.checked(value, f"value of stream {key!r}", ctx.app.limits)
    if not ctx.in_step:
        _refuse_conn(conn, "write_stream")
        plan = _in_workflow(ctx, "write_stream_in_workflow", f"stream:{key}", (key, body), "0")
        return int(ctx.sync_driver("pgdurable.write_stream").run(plan))
    params = (ctx.run_id, ctx.attempt, key, body, f"{_step_position(ctx)}:{_next_index(ctx, key)}")
    target = _sync_target(ctx, conn, "write_stream")
    return int(call_sql(target, "write_stream", params).fetchone()[0])


async def write_stream_async(
    key: str, value: Any, *, conn: psycopg.AsyncConnection[Any] | None = None
) -> int:
    """``write_stream()`` in an async workflow or async step (``conn``: an AsyncConnection)."""
    ctx = _run_context("write_stream_async", key)
    body = _codec.checked(value, f"value of stream {key!r}", ctx.app.limits)
    if not ctx.in_step:
        _refuse_conn(conn, "write_stream_async")
        plan = _in_workflow(ctx, "write_stream_in_workflow", f"stream:{key}", (key, body), "0")
        return int(await ctx.async_driver("pgdurable.write_stream_async").run(plan))
    params = (ctx.run_id, ctx.attempt, key, body, f"{_step_position(ctx)}:{_next_index(ctx, key)}")
    target = _async_target(ctx, conn, "write_stream_async")
    return int((await (await aq.call_sql(target, "write_stream", params)).fetchone())[0])


def close_stream(key: str, *, conn: psycopg.Connection[Any] | None = None) -> int:
    """Close this run's stream ``key``: readers end once they have read every value, and
    further writes raise ``InvalidState``. Idempotent. Returns the closing offset (the number
    of values in the stream)."""
    ctx = _run_context("close_stream", key)
    if not ctx.in_step:
        _refuse_conn(conn, "close_stream")
        plan = _in_workflow(ctx, "close_stream_in_workflow", f"close:{key}", (key,), "close")
        return int(ctx.sync_driver("pgdurable.close_stream").run(plan))
    params = (ctx.run_id, ctx.attempt, key, f"{_step_position(ctx)}:close")
    target = _sync_target(ctx, conn, "close_stream")
    return int(call_sql(target, "close_stream", params).fetchone()[0])


async def close_stream_async(key: str, *, conn: psycopg.AsyncConnection[Any] | None = None) -> int:
    """``close_stream()`` in an async workflow or async step."""
    ctx = _run_context("close_stream_async", key)
    if not ctx.in_step:
        _refuse_conn(conn, "close_stream_async")
        plan = _in_workflow(ctx, "close_stream_in_workflow", f"close:{key}", (key,), "close")
        return int(await ctx.async_driver("pgdurable.close_stream_async").run(plan))
    params = (ctx.run_id, ctx.attempt, key, f"{_step_position(ctx)}:close")
    target = _async_target(ctx, conn, "close_stream_async")
    return int((await (await aq.call_sql(target, "close_stream", params)).fetchone())[0])


def _run_context(what: str, key: str) -> RunContext:
    # Inside a step too (unlike _context.require): steps and transaction steps may write.
    check_key(key)
    ctx = _current.get()
    if ctx is None:
        raise NotInWorkflow(
            f"pgdurable.{what}() only works inside a workflow or one of its steps: a stream "
            "belongs to a run. Outside one, read streams with read_stream()"
        )
    return ctx


def _sync_target(
    ctx: RunContext, conn: psycopg.Connection[Any] | None, what: str
) -> psycopg.Connection[Any]:
    target = aq.sync_conn(conn, what) or ctx.conn
    if isinstance(target, psycopg.AsyncConnection):
        raise TypeError(
            f"{what}() in a plain step of an async workflow has no connection of its own to "
            f"write on: make the step `async def` and `await pgdurable.{what}_async(...)`, or "
            "pass conn=<a psycopg.Connection>"
        )
    return target


def _async_target(
    ctx: RunContext, conn: psycopg.AsyncConnection[Any] | None, what: str
) -> psycopg.AsyncConnection[Any]:
    target = aq.async_conn(conn, what) or ctx.conn
    if not isinstance(target, psycopg.AsyncConnection):
        raise TypeError(
            f"{what}() is the async form, and this run is a plain (sync) one: call "
            f"pgdurable.{what.removesuffix('_async')}() instead"
        )
    return target


def _refuse_conn(conn: object, what: str) -> None:
    if conn is not None:
        raise TypeError(
            f"{what}(conn=...) is for transaction steps; in workflow code the write is a "
            "durable operation of its own, recorded on the run's connection"
        )


def _in_workflow(
    ctx: RunContext, query: str, name: str, args: tuple[Any, ...], suffix: str
) -> Plan[int]:
    """A write or close by workflow code: a durable operation, its checkpoint recorded in the
    same statement, so a replay returns the recorded offset and sends nothing."""
    pos, step_key, rec = ctx.next_op("stream", name)
    if rec is not None:
        return int(rec.output)
    ctx.check_alive()
    origin = f"{pos}:{suffix}"
    params = (ctx.run_id, ctx.attempt, *args, origin, ctx.run_id, ctx.attempt, pos, step_key, name)
    row = yield Sql(query, params, "one")
    return int(row[0])


def _step_position(ctx: RunContext) -> int:
    # The step being executed took the last position of the replay cursor before it ran.
    return ctx.seq - 1


def _next_index(ctx: RunContext, key: str) -> int:
    """This attempt's count of writes to ``key`` by the running step. Kept in ctx.counts under a
    name no operation can have (NUL), so it dies with the execution; a step attempt started
    later (a retry, a replay in another process) counts from 0 again."""
    attempt = ctx.step_attempt
    name = f"\x00stream\x00{_step_position(ctx)}\x00{attempt}\x00{key}"
    n = ctx.counts.get(name, 0)
    ctx.counts[name] = n + 1
    return n
