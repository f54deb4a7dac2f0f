"""Child workflows: a workflow starting another run, durably."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from . import _codec
from ._context import RunContext
from ._handle import RunHandle
from ._options import StartOptions
from ._starting import start
from ._steps import _record, _replayed

if TYPE_CHECKING:
    from ._runtime import Registered


def start_child(
    ctx: RunContext,
    wf: Registered,
    opts: StartOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> RunHandle[Any]:
    """Start a child run once: its start is checkpointed, so a replay returns the same run."""
    seq, key, rec = ctx.next_op("child", wf.name)
    if rec is not None:
        out = _replayed(rec)
        return RunHandle(ctx.app, uuid.UUID(out["run_id"]), out["workflow_id"], wf.name)
    ctx.check_alive()
    if opts.workflow_id is None:
        # Deterministic, so a start whose checkpoint was lost finds the same child again.
        opts.workflow_id = f"{ctx.workflow_id}/{key}"
    opts.parent_id = str(ctx.run_id)
    with ctx.conn.transaction():
        handle = start(ctx.app, wf.name, args, kwargs, opts, ctx.conn, wf)
        _record(
            ctx,
            seq,
            key,
            "child",
            wf.name,
            _codec.checked(
                {"run_id": str(handle.run_id), "workflow_id": handle.workflow_id}, "child"
            ),
        )
    return handle
