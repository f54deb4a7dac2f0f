"""Child workflows: a workflow starting another run, durably, as a plan."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from . import _codec
from ._context import RunContext
from ._handle import RunHandle
from ._ops import Atomic, Plan, Sql
from ._options import StartOptions
from ._starting import start_params, started
from ._steps import _replayed, record

if TYPE_CHECKING:
    from ._runtime import Registered


def _start_and_record(
    ctx: RunContext, seq: int, key: str, wf: Registered, opts: StartOptions, params: Any
) -> Plan[RunHandle[Any]]:
    row = yield Sql("start_run", params, "one")
    handle = started(ctx.app, row[0], wf.name, opts)
    out = {"run_id": str(handle.run_id), "workflow_id": handle.workflow_id}
    yield record(ctx, seq, key, "child", wf.name, _codec.checked(out, "child"))
    return handle


def child_plan(
    ctx: RunContext,
    wf: Registered,
    opts: StartOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Plan[RunHandle[Any]]:
    """Start a child run once: its start is checkpointed, so a replay returns the same run."""
    if opts.dedup_key is not None or opts.debounce is not None:
        raise ValueError(
            "dedup_key and debounce are for starts from outside a workflow: a child start is "
            "idempotent already (a replay returns the same child)"
        )
    seq, key, rec = ctx.next_op("child", wf.name)
    if rec is not None:
        out = _replayed(rec)
        return RunHandle(ctx.app, uuid.UUID(out["run_id"]), out["workflow_id"], wf.name)
    ctx.check_alive()
    opts = opts.copy()
    if opts.workflow_id is None:
        # Deterministic, so a start whose checkpoint was lost finds the same child again.
        opts.workflow_id = f"{ctx.workflow_id}/{key}"
    opts.parent_id = str(ctx.run_id)
    params = start_params(ctx.app, wf.name, args, dict(kwargs), opts, wf)
    handle: RunHandle[Any] = yield Atomic(_start_and_record(ctx, seq, key, wf, opts, params))
    return handle
