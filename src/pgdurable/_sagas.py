"""Sagas and code changes inside a run, as plans: compensations registered as the work is done
and run in reverse when the run fails or is cancelled, and ``patched()`` guards."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from . import _codec
from ._context import RunContext, require
from ._errors import LeaseLost
from ._ops import Plan
from ._retry import Retry
from ._steps import record, step_plan

log = logging.getLogger("pgdurable.executor")


@runtime_checkable
class StepLike(Protocol):
    """A step definition (``@app.step``): compensations run it with its own name and retries."""

    name: str
    retry: Retry
    fn: Callable[..., Any]


def compensate_plan(
    ctx: RunContext, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Plan[None]:
    name = fn.name if isinstance(fn, StepLike) else getattr(fn, "__name__", "compensation")
    seq, key, rec = ctx.next_op("compensate", name)
    if rec is None:
        ctx.check_alive()
        stored = _codec.checked({"args": list(args), "kwargs": kwargs}, f"arguments of {name}")
        yield record(ctx, seq, key, "compensate", name, stored)
    ctx.compensations.append((name, fn, args, kwargs))


def compensate(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Register an undo action (a step or a plain function) for the work just done.

    If the workflow later fails or is cancelled, the registered compensations run durably, in
    reverse order, each as a step with retries; then the run ends with the original outcome.
    """
    ctx = require("compensate")
    ctx.sync_driver("pgdurable.compensate").run(compensate_plan(ctx, fn, args, kwargs))


async def compensate_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``compensate()`` in an async workflow (the undo action may be async or plain)."""
    ctx = require("compensate_async")
    await ctx.async_driver("pgdurable.compensate_async").run(compensate_plan(ctx, fn, args, kwargs))


def compensations_plan(ctx: RunContext) -> Plan[None]:
    """Run the registered compensations in reverse order, each as a durable step."""
    ctx.compensating = True
    for name, fn, args, kwargs in reversed(ctx.compensations):
        policy, call = (fn.retry, fn.fn) if isinstance(fn, StepLike) else (Retry(), fn)
        try:
            yield from step_plan(ctx, "step", f"undo:{name}", policy, call, args, kwargs)
        except LeaseLost:
            raise
        except Exception as exc:
            # Its error is the undo step's checkpoint; the other compensations still run and
            # the run ends with its original error (not stuck 'running' until dead-lettered).
            log.error("run %s: compensation %s failed after its retries: %r", ctx.run_id, name, exc)


def patched_plan(ctx: RunContext, change_id: str) -> Plan[bool]:
    rec = ctx.history.get(ctx.seq)
    if rec is not None and not (rec.kind == "patch" and rec.name == change_id):
        return False
    seq, key, rec = ctx.next_op("patch", change_id)
    if rec is None:
        ctx.check_alive()
        yield record(ctx, seq, key, "patch", change_id, _codec.checked(True, "patch"))
    return True


def patched(change_id: str) -> bool:
    """True where this run reaches this point under the new code, False for a run whose
    history was recorded before the change. Guard a code change with it while old runs are in
    flight; remove the guard once they have finished."""
    ctx = require("patched")
    return bool(ctx.sync_driver("pgdurable.patched").run(patched_plan(ctx, change_id)))


async def patched_async(change_id: str) -> bool:
    """``patched()`` in an async workflow."""
    ctx = require("patched_async")
    return bool(await ctx.async_driver("pgdurable.patched_async").run(patched_plan(ctx, change_id)))
