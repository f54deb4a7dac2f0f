"""The database floor: named engine calls, and telling a lost connection from a failed statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ._errors import translate
from ._queries import Q

# SQLSTATEs that mean the session is gone, not that one statement failed: the server shut the
# backend down (57P01 admin shutdown, 57P02 crash, 57P03 cannot connect now) or class 08.
_SESSION_LOST = frozenset({"57P01", "57P02", "57P03"})


def call_sql(conn: psycopg.Connection[Any], name: str, params: Sequence[Any] | None = None) -> Any:
    """Execute a named query, translating the engine's SQLSTATEs into pgdurable exceptions."""
    try:
        return conn.execute(Q[name], params, prepare=True)
    except psycopg.Error as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def is_connection_error(exc: BaseException, conn: Any = None) -> bool:
    """True when ``exc`` means the connection is lost (hand the run back and reconnect); False
    for an error of one statement (too large, cancelled, disk full, bad data...), which fails
    that operation and leaves the session usable."""
    if not isinstance(exc, psycopg.Error):
        return False
    # conn: the psycopg Connection or AsyncConnection the statement ran on, if known
    if conn is not None and conn.broken:
        return True
    state = exc.sqlstate
    if state is None:
        # raised by the client library itself: a dropped socket, a failed connect
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _SESSION_LOST


def describe(exc: BaseException) -> str:
    """A one-line description of a database error, with its SQLSTATE when it has one."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{text} (SQLSTATE {state})" if state else text


# --- behind a connection pooler -------------------------------------------------------------

# pooler="transaction": PgBouncer's pool_mode = transaction (and poolers like it) lends each
# transaction a server connection of its pool, so session state does not follow the client:
# a LISTEN lands on a server connection another client gets next (notifications are lost),
# and a prepared statement exists on one server connection only (before PgBouncer 1.21).
POOLER_MODES = ("transaction",)


def check_pooler(pooler: object, given_as: str = "pooler") -> str | None:
    """``pooler=`` (or $PGDURABLE_POOLER, named by ``given_as``) checked: None for a direct
    connection or a session-mode pooler, else "transaction"."""
    if pooler is None or pooler == "":
        return None
    if pooler == "session":
        raise ValueError(
            f"{given_as}='session' is not needed: a session-mode pooler keeps one server "
            f"connection per client, so pgdurable works as on a direct one (leave {given_as} unset)"
        )
    if pooler not in POOLER_MODES:
        raise ValueError(
            f"{given_as} must be 'transaction' (PgBouncer pool_mode = transaction) or unset, "
            f"got {pooler!r}"
        )
    return str(pooler)


def connection_kwargs(pooler: str | None) -> dict[str, Any]:
    """What every connection and pool of a Runtime opens with: autocommit, and behind a
    transaction pooler no server-side prepared statements (psycopg prepares a statement named
    _pg3_N on whichever server connection the pooler lent: the next statement may run on
    another one, and another client may meet it there)."""
    if pooler is None:
        return {"autocommit": True}
    return {"autocommit": True, "prepare_threshold": None}


def pooler_suspected(conn: psycopg.Connection[Any]) -> bool:
    """True when something between us and PostgreSQL answers for it: the backend pid the
    connection was given at start-up (a pooler makes one up) is not the server's own."""
    # never prepared: without pooler mode a pooler may already hold a _pg3_0 of another client
    row = conn.execute(Q["backend_pid"], prepare=False).fetchone()
    return bool(row is not None and row[0] != conn.info.backend_pid)
