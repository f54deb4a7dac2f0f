"""Waiting and composition inside a run: events, messages, other runs, sagas, patches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from . import _codec
from ._context import RunContext, Suspended, require
from ._durations import seconds
from ._errors import LeaseLost
from ._payloads import event_params, message_params
from ._remote_errors import run_outcome
from ._retry import Retry
from ._steps import _record, _replayed, _sql, run_step

if TYPE_CHECKING:
    from ._handle import RunHandle

R = TypeVar("R")


@runtime_checkable
class StepLike(Protocol):
    """A step definition (``@app.step``): compensations run it with its own name and retries."""

    name: str
    retry: Retry
    fn: Callable[..., Any]


def _timeout(value: float | timedelta | None, what: str) -> float | None:
    return seconds(value, f"{what} timeout")


def _payload(ctx: RunContext, text: str | None, what: str) -> Any:
    return _codec.loads(text, f"{what} received by run {ctx.run_id}", ctx.app.limits)


def wait_for_event(name: str, timeout: float | timedelta | None = None) -> Any:
    """Wait durably for the event ``name`` and return its payload.

    The newest event of that name counts, whether emitted before or after the wait began. The
    run holds no worker while it waits. On timeout raises ``EventTimeout``; both the payload
    and the timeout are recorded, so a replay sees the same outcome.
    """
    if not isinstance(name, str) or not name or len(name) > 500 or "\x00" in name:
        raise ValueError(
            f"event name must be a string of 1 to 500 characters without NUL, got {name!r}"
        )
    secs = _timeout(timeout, "wait_for_event")
    ctx = require("wait_for_event")
    seq, key, rec = ctx.next_op("event", name)
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    received, payload = _sql(
        ctx, "wait_event", (ctx.run_id, ctx.attempt, seq, key, name, secs)
    ).fetchone()
    if not received:
        raise Suspended()
    return _payload(ctx, payload, f"payload of event {name!r}")


def recv(topic: str | None = None, timeout: float | timedelta | None = None) -> Any:
    """Receive the next message of ``topic`` sent to this run (FIFO), waiting durably.

    Each message is consumed exactly once: its consumption and checkpoint commit together.
    On timeout raises ``MessageTimeout``.
    """
    if topic is not None and not isinstance(topic, str):
        raise TypeError(f"topic must be a string or None, got {type(topic).__name__}")
    if topic is not None and (len(topic) > 500 or "\x00" in topic):
        raise ValueError(f"topic must be at most 500 characters without NUL, got {topic[:50]!r}...")
    secs = _timeout(timeout, "recv")
    ctx = require("recv")
    seq, key, rec = ctx.next_op("message", f"recv:{topic or ''}")
    if rec is not None:
        return _replayed(rec)
    ctx.check_alive()
    received, payload = _sql(
        ctx, "recv_message", (ctx.run_id, ctx.attempt, seq, key, topic, secs)
    ).fetchone()
    if not received:
        raise Suspended()
    return _payload(ctx, payload, f"message of topic {topic or ''!r}")


def wait_result(ctx: RunContext, handle: RunHandle[R]) -> R:
    """``handle.result()`` inside a workflow: a durable wait that holds no worker slot."""
    seq, key, rec = ctx.next_op("result", handle.workflow_name)
    if rec is not None:
        status, output, error = rec.output["status"], rec.output.get("output"), rec.error
    else:
        ctx.check_alive()
        finished, status, output, error = _sql(
            ctx, "wait_run", (ctx.run_id, ctx.attempt, seq, key, handle.run_id)
        ).fetchone()
        if not finished:
            raise Suspended()
        output = _payload(ctx, output, f"result of run {handle.run_id}")
        error = _payload(ctx, error, f"error of run {handle.run_id}")
    result: R = run_outcome(handle.run_id, handle.workflow_id, status, output, error)
    return result


def gather(*handles: RunHandle[Any]) -> list[Any]:
    """Wait durably for every run and return their results in order (fan-in).

    The runs execute in parallel; the first failure raises its ``WorkflowFailed``.
    """
    require("gather")
    return [h.result() for h in handles]


def emit_in_run(ctx: RunContext, name: str, payload: Any) -> None:
    """An event emitted by a workflow: checkpointed, so a replay does not emit it twice."""
    seq, key, rec = ctx.next_op("emit", name)
    if rec is not None:
        return
    ctx.check_alive()
    params = event_params(name, payload, ctx.app.limits)
    with ctx.conn.transaction():
        _sql(ctx, "emit_event", params)
        _record(ctx, seq, key, "emit", name, None)


def send_in_run(ctx: RunContext, target: str, payload: Any, topic: str | None) -> None:
    """A message sent by a workflow: checkpointed, so a replay does not send it twice."""
    seq, key, rec = ctx.next_op("send", f"send:{topic or ''}")
    if rec is not None:
        return
    ctx.check_alive()
    params = message_params(target, payload, topic, ctx.app.limits)
    with ctx.conn.transaction():
        _sql(ctx, "send_message", params)
        _record(ctx, seq, key, "send", f"send:{topic or ''}", None)


def compensate(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Register an undo action (a step or a plain function) for the work just done.

    If the workflow later fails or is cancelled, the registered compensations run durably, in
    reverse order, each as a step with retries; then the run ends with the original outcome.
    """
    ctx = require("compensate")
    name = fn.name if isinstance(fn, StepLike) else getattr(fn, "__name__", "compensation")
    seq, key, rec = ctx.next_op("compensate", name)
    if rec is None:
        ctx.check_alive()
        _record(
            ctx,
            seq,
            key,
            "compensate",
            name,
            _codec.checked({"args": list(args), "kwargs": kwargs}, f"arguments of {name}"),
        )
    ctx.compensations.append((name, fn, args, kwargs))


def run_compensations(ctx: RunContext) -> None:
    """Run the registered compensations in reverse order, each as a durable step."""
    ctx.compensating = True
    for name, fn, args, kwargs in reversed(ctx.compensations):
        try:
            if isinstance(fn, StepLike):
                run_step(ctx, "step", f"undo:{name}", fn.retry, fn.fn, args, kwargs)
            else:
                run_step(ctx, "step", f"undo:{name}", Retry(), fn, args, kwargs)
        except LeaseLost:
            raise
        except Exception as exc:
            # Its error is the undo step's checkpoint; the other compensations still run and
            # the run ends with its original error (not stuck 'running' until dead-lettered).
            logging.getLogger("pgdurable.executor").error(
                "run %s: compensation %s failed after its retries: %r", ctx.run_id, name, exc
            )


def patched(change_id: str) -> bool:
    """True where this run reaches this point under the new code, False for a run whose
    history was recorded before the change. Guard a code change with it while old runs are in
    flight; remove the guard once they have finished."""
    ctx = require("patched")
    rec = ctx.history.get(ctx.seq)
    if rec is not None and not (rec.kind == "patch" and rec.name == change_id):
        return False
    seq, key, rec = ctx.next_op("patch", change_id)
    if rec is None:
        ctx.check_alive()
        _record(ctx, seq, key, "patch", change_id, _codec.checked(True, "patch"))
    return True
