"""Waiting inside a run, as plans: events, messages, the end of other runs, and the events and
messages a run emits itself. Each public call has an ``_async`` twin for async workflows."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import _codec
from ._context import RunContext, Suspended, require
from ._durations import seconds
from ._ops import Atomic, Plan, Sql
from ._payloads import event_params, message_params
from ._remote_errors import run_outcome
from ._steps import _replayed, record

if TYPE_CHECKING:
    from uuid import UUID

R = TypeVar("R")


def _timeout(value: float | timedelta | None, what: str) -> float | None:
    return seconds(value, f"{what} timeout")


def _payload(ctx: RunContext, text: str | None, what: str) -> Any:
    return _codec.loads(text, f"{what} received by run {ctx.run_id}", ctx.app.limits)


def _event_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 500 or "\x00" in name:
        raise ValueError(
            f"event name must be a string of 1 to 500 characters without NUL, got {name!r}"
        )
    return name


def _topic(topic: object) -> str | None:
    if topic is not None and not isinstance(topic, str):
        raise TypeError(f"topic must be a string or None, got {type(topic).__name__}")
    if topic is not None and (len(topic) > 500 or "\x00" in topic):
        raise ValueError(f"topic must be at most 500 characters without NUL, got {topic[:50]!r}...")
    return topic


def _wait_plan(
    ctx: RunContext, kind: str, name: str, query: str, what: str, wanted: Any, secs: float | None
) -> Plan[Any]:
    """Wait for an event or a message: the recorded one, one already there, or suspend."""
    seq, key, rec = ctx.next_op(kind, name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    params = (ctx.run_id, ctx.attempt, seq, key, wanted, secs)
    received, payload = yield Sql(query, params, "one")
    if not received:
        raise Suspended()
    return _payload(ctx, payload, what)


def event_plan(ctx: RunContext, name: str, secs: float | None) -> Plan[Any]:
    what = f"payload of event {name!r}"
    return _wait_plan(ctx, "event", name, "wait_event", what, name, secs)


def wait_for_event(name: str, timeout: float | timedelta | None = None) -> Any:
    """Wait durably for the event ``name`` and return its payload.

    The newest event of that name counts, whether emitted before or after the wait began. The
    run holds no worker while it waits. On timeout raises ``EventTimeout``; both the payload
    and the timeout are recorded, so a replay sees the same outcome.
    """
    secs = _timeout(timeout, "wait_for_event")
    ctx = require("wait_for_event")
    driver = ctx.sync_driver("pgdurable.wait_for_event")
    return driver.run(event_plan(ctx, _event_name(name), secs))


async def wait_for_event_async(name: str, timeout: float | timedelta | None = None) -> Any:
    """``wait_for_event()`` in an async workflow."""
    secs = _timeout(timeout, "wait_for_event_async")
    ctx = require("wait_for_event_async")
    driver = ctx.async_driver("pgdurable.wait_for_event_async")
    return await driver.run(event_plan(ctx, _event_name(name), secs))


def message_plan(ctx: RunContext, topic: str | None, secs: float | None) -> Plan[Any]:
    what = f"message of topic {topic or ''!r}"
    return _wait_plan(ctx, "message", f"recv:{topic or ''}", "recv_message", what, topic, secs)


def recv(topic: str | None = None, timeout: float | timedelta | None = None) -> Any:
    """Receive the next message of ``topic`` sent to this run (FIFO), waiting durably.

    Each message is consumed exactly once: its consumption and checkpoint commit together.
    On timeout raises ``MessageTimeout``.
    """
    checked = _topic(topic)
    secs = _timeout(timeout, "recv")
    ctx = require("recv")
    return ctx.sync_driver("pgdurable.recv").run(message_plan(ctx, checked, secs))


async def recv_async(topic: str | None = None, timeout: float | timedelta | None = None) -> Any:
    """``recv()`` in an async workflow."""
    checked = _topic(topic)
    secs = _timeout(timeout, "recv_async")
    ctx = require("recv_async")
    driver = ctx.async_driver("pgdurable.recv_async")
    return await driver.run(message_plan(ctx, checked, secs))


def result_plan(ctx: RunContext, run_id: UUID, workflow_id: str, workflow_name: str) -> Plan[Any]:
    """``handle.result()`` inside a workflow: a durable wait that holds no worker slot."""
    seq, key, rec = ctx.next_op("result", workflow_name)
    if rec is not None:
        status, output, error = rec.output["status"], rec.output.get("output"), rec.error
    else:
        ctx.check_alive()
        finished, status, output, error = yield Sql(
            "wait_run", (ctx.run_id, ctx.attempt, seq, key, run_id), "one"
        )
        if not finished:
            raise Suspended()
        output = _payload(ctx, output, f"result of run {run_id}")
        error = _payload(ctx, error, f"error of run {run_id}")
    return run_outcome(run_id, workflow_id, status, output, error)


def gather_plan(ctx: RunContext, handles: tuple[Any, ...]) -> Plan[list[Any]]:
    results = []
    for h in handles:
        results.append((yield from result_plan(ctx, h.run_id, h.workflow_id, h.workflow_name)))
    return results


def gather(*handles: Any) -> list[Any]:
    """Wait durably for every run and return their results in order (fan-in).

    The runs execute in parallel; the first failure raises its ``WorkflowFailed``.
    """
    ctx = require("gather")
    return list(ctx.sync_driver("pgdurable.gather").run(gather_plan(ctx, handles)))


async def gather_async(*handles: Any) -> list[Any]:
    """``gather()`` in an async workflow: ``a, b = await pgdurable.gather_async(h1, h2)``."""
    ctx = require("gather_async")
    return list(await ctx.async_driver("pgdurable.gather_async").run(gather_plan(ctx, handles)))


def _emit_then_record(
    ctx: RunContext, seq: int, key: str, kind: str, name: str, query: str, params: tuple[Any, ...]
) -> Plan[None]:
    yield Sql(query, params)
    yield record(ctx, seq, key, kind, name, None)


def emit_plan(ctx: RunContext, name: str, payload: Any) -> Plan[None]:
    """An event emitted by a workflow: checkpointed, so a replay does not emit it twice."""
    seq, key, rec = ctx.next_op("emit", name)
    if rec is not None:
        return
    ctx.check_alive()
    params = event_params(name, payload, ctx.app.limits)
    yield Atomic(_emit_then_record(ctx, seq, key, "emit", name, "emit_event", params))


def send_plan(ctx: RunContext, target: str, payload: Any, topic: str | None) -> Plan[None]:
    """A message sent by a workflow: checkpointed, so a replay does not send it twice."""
    name = f"send:{topic or ''}"
    seq, key, rec = ctx.next_op("send", name)
    if rec is not None:
        return
    ctx.check_alive()
    params = message_params(target, payload, topic, ctx.app.limits)
    yield Atomic(_emit_then_record(ctx, seq, key, "send", name, "send_message", params))
