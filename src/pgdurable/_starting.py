"""Starting runs from outside a workflow, and finding them again."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from . import _codec
from ._db import call_sql
from ._handle import RunHandle
from ._options import StartOptions

if TYPE_CHECKING:
    from ._runtime import Registered, Runtime


def start(
    runtime: Runtime,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: StartOptions,
    conn: psycopg.Connection[Any] | None,
    wf: Registered | None = None,
) -> RunHandle[Any]:
    """Start one run of ``name`` (in ``conn``'s transaction when given) and return its handle.
    ``wf``, when this process defines the workflow, supplies its queue and recovery cap."""
    payload = _codec.encode_input(args, kwargs, runtime.limits)
    options = Jsonb(opts.to_json(wf.queue if wf else None, wf.max_recoveries if wf else None))
    if conn is not None:
        run_id = call_sql(conn, "start_run", (name, payload, options)).fetchone()[0]
    else:
        with runtime.pool.connection() as c:
            run_id = call_sql(c, "start_run", (name, payload, options)).fetchone()[0]
    key = opts.workflow_id
    workflow_id = key.lower() if key is not None and str(run_id) == key.lower() else key
    return RunHandle(runtime, run_id, workflow_id or str(run_id), name)


def run_key(key: str | uuid.UUID) -> dict[str, Any]:
    """Parameters of run_by_workflow_id: a uuid-shaped key is looked up as a run id first."""
    text = str(key)
    try:
        run_id = uuid.UUID(text) if len(text) == 36 else None
    except ValueError:
        run_id = None
    return {"key": text, "run_id": run_id}
