"""What every worker does besides running runs: write the App's declarations (queue limits,
schedules, retention rules) when it starts, and, from its listener thread, fire due schedules
every second and delete expired finished runs about once a minute. Also the listener's
connections, which depend on whether a transaction pooler sits in front of the database."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from ._db import call_sql, describe, pooler_suspected
from ._queries import Q
from ._schedule_firing import fire_due

if TYPE_CHECKING:
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.worker")

# How often each worker's listener looks for due schedules (any one of them fires a tick).
SCHEDULE_EVERY = 1.0
# How often a worker deletes a batch of expired finished runs (retention); again after a second
# while batches come back full. The engine lets one worker at a time do it.
PURGE_EVERY = 60.0
PURGE_BATCH = 1000


def apply_declarations(app: Runtime) -> None:
    """The flow control, schedules and retention the App declares (app.queue(...),
    app.schedule(...), app.retention(...)): in the database before the first claim, so the
    worker's claims already honour them."""
    limits = list(getattr(app, "queues", {}).values())
    schedules = list(getattr(app, "schedules", {}).values())
    rules = dict(getattr(app, "retention_rules", {}))
    if not (limits or schedules or rules):
        return
    with app.pool.connection() as conn:
        for queue in limits:
            call_sql(conn, "configure_queue", queue.params())
        for spec in schedules:
            call_sql(conn, "upsert_schedule", spec.params(app.limits))
        for (kind, name), keep in rules.items():
            call_sql(conn, "set_retention", (kind, name or None, keep))


def fire_schedules(conn: psycopg.Connection[Any]) -> None:
    """Fire due schedules; a database error reaches the listener (which reconnects), anything
    else is logged: a schedule must not stop the listener."""
    try:
        fire_due(conn)
    except psycopg.Error:
        raise
    except Exception as exc:
        log.error("firing schedules failed: %r", exc)


def purge(conn: psycopg.Connection[Any]) -> float:
    """Delete one batch of expired finished runs; seconds until the next batch."""
    deleted = int(call_sql(conn, "purge_expired", (PURGE_BATCH,)).fetchone()[0])
    if deleted:
        log.info("retention: deleted %s finished runs", deleted, extra={"deleted": deleted})
    return 1.0 if deleted >= PURGE_BATCH else PURGE_EVERY


def listener_connections(
    app: Runtime, stack: contextlib.ExitStack
) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any] | None]:
    """The listener thread's connections (closed with ``stack``): one for its chores (registry,
    timers, schedules, retention) on the App's dsn, and the one LISTENing for wake-ups: the same
    on a direct dsn, the ``listen_dsn`` when given, None behind a transaction pooler without
    one (a LISTEN there would be lost: the claim loops then only poll)."""
    chores = stack.enter_context(
        psycopg.connect(app.dsn, **app.connection_kwargs, connect_timeout=5)
    )
    if not app.can_listen:
        return chores, None
    ears = chores
    if app.listen_dsn is not None:
        ears = stack.enter_context(
            psycopg.connect(app.listen_dsn, autocommit=True, connect_timeout=5)
        )
    ears.execute(Q["listen_wake"])
    return chores, ears


def warn_if_pooled(app: Runtime) -> None:
    """Warn at start when a pooler seems to answer for the database and pooler= is not set: in
    transaction mode, wake-ups would be lost and prepared statements collide."""
    if app.pooler is not None:
        return
    try:
        with app.pool.connection() as conn:
            suspected = pooler_suspected(conn)
    except psycopg.Error as exc:  # the worker's own first statements report a real problem
        log.debug("could not check for a connection pooler: %s", describe(exc))
        return
    if suspected:
        log.warning(
            "a connection pooler seems to sit in front of the database (the server's backend "
            "pid is not the one the connection was given). If it pools by transaction "
            "(PgBouncer pool_mode = transaction), start the worker with pooler='transaction' "
            "(--pooler transaction) and a direct listen_dsn (--listen-dsn): see docs/poolers.md"
        )
