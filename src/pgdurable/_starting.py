"""Starting runs from outside a workflow, and finding them again, from sync or async code.

What a start sends (``start_params``) and the handle it returns (``started``) are decided once;
``start`` and ``start_async`` only run the statement on their kind of connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from . import _async_queries as aq
from . import _codec
from ._db import call_sql
from ._errors import RunNotFound
from ._handle import RunHandle
from ._names import check_text
from ._options import StartOptions
from ._queries import Q
from ._tracing import with_trace

if TYPE_CHECKING:
    from ._runtime import Registered, Runtime


def start_params(
    runtime: Runtime,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: StartOptions,
    wf: Registered | None,
) -> tuple[str, Jsonb, Jsonb]:
    """The parameters of ``start_run``: the name, the input encoded within the App's limits,
    and the options. ``wf``, when this process defines the workflow, supplies its queue and
    recovery cap."""
    payload = _codec.encode_input(args, kwargs, runtime.limits)
    options = opts.to_json(wf.queue if wf else None, wf.max_recoveries if wf else None)
    return name, payload, Jsonb(with_trace(options))  # started in a span: joins its trace


def started(runtime: Runtime, run_id: Any, name: str, opts: StartOptions) -> RunHandle[Any]:
    """The handle of a run ``start_run`` returned (a uuid-shaped key is the run id, lowered)."""
    key = opts.workflow_id
    workflow_id = key.lower() if key is not None and str(run_id) == key.lower() else key
    return RunHandle(runtime, run_id, workflow_id or str(run_id), name)


def start(
    runtime: Runtime,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: StartOptions,
    conn: psycopg.Connection[Any] | None,
    wf: Registered | None = None,
) -> RunHandle[Any]:
    """Start one run of ``name`` (in ``conn``'s transaction when given) and return its handle."""
    conn = aq.sync_conn(conn, "start")
    params = start_params(runtime, name, args, kwargs, opts, wf)
    if conn is not None:
        return _started_on(conn, runtime, params, name, opts)
    with runtime.pool.connection() as c:
        return _started_on(c, runtime, params, name, opts)


def _started_on(
    conn: psycopg.Connection[Any], runtime: Runtime, params: Any, name: str, opts: StartOptions
) -> RunHandle[Any]:
    run_id = call_sql(conn, "start_run", params).fetchone()[0]
    if opts.dedup_key is not None:
        # a dedup hit returns another start's run: its own workflow id and workflow
        row = conn.execute(Q["run_by_workflow_id"], run_key(str(run_id))).fetchone()
        return found(runtime, row, str(run_id))
    return started(runtime, run_id, name, opts)


async def start_async(
    runtime: Runtime,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: StartOptions,
    conn: psycopg.AsyncConnection[Any] | None,
    wf: Registered | None = None,
) -> RunHandle[Any]:
    """``start`` on an AsyncConnection: the caller's (in its transaction) or the async pool's."""
    conn = aq.async_conn(conn, "start_async")
    params = start_params(runtime, name, args, kwargs, opts, wf)
    if conn is not None:
        return await _started_on_async(conn, runtime, params, name, opts)
    async with runtime.async_connection() as c:
        return await _started_on_async(c, runtime, params, name, opts)


async def _started_on_async(
    conn: psycopg.AsyncConnection[Any],
    runtime: Runtime,
    params: Any,
    name: str,
    opts: StartOptions,
) -> RunHandle[Any]:
    run_id = (await (await aq.call_sql(conn, "start_run", params)).fetchone())[0]
    if opts.dedup_key is not None:
        cur = await conn.execute(Q["run_by_workflow_id"], run_key(str(run_id)))
        return found(runtime, await cur.fetchone(), str(run_id))
    return started(runtime, run_id, name, opts)


def run_key(key: str | uuid.UUID) -> dict[str, Any]:
    """Parameters of run_by_workflow_id: a uuid-shaped key is looked up as a run id first."""
    text = check_text("workflow_id", str(key))
    try:
        run_id = uuid.UUID(text) if len(text) == 36 else None
    except ValueError:
        run_id = None
    return {"key": text, "run_id": run_id}


def found(runtime: Runtime, row: Sequence[Any] | None, key: str | uuid.UUID) -> RunHandle[Any]:
    """The handle of a ``run_by_workflow_id`` row; RunNotFound when there was none."""
    if row is None:
        raise RunNotFound(f"no run has workflow_id or id {str(key)!r}")
    return RunHandle(runtime, row[0], row[1], row[2])
