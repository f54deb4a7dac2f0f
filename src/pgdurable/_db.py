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
