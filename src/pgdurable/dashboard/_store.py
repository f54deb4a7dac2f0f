"""The dashboard's database side: its own small connection pool, its named statements
(queries.sql beside this file), read-only page transactions, and actions: an engine call and its
audit entry in one transaction."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from .._db import is_connection_error
from .._errors import PgDurableError, translate
from .._queries import parse
from .._schema import check_schema

MAX_ACTOR = 200  # characters, as audit_log_actor_check allows
QUERIES = parse((Path(__file__).resolve().parent / "queries.sql").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class AuditEntry:
    """One row of pgdurable.audit_log: who did which action, on which run or named target."""

    actor: str
    action: str
    run_id: uuid.UUID | None = None
    target: str | None = None
    detail: dict[str, Any] | None = None

    def params(self) -> tuple[Any, ...]:
        detail = None if self.detail is None else Jsonb(self.detail)
        return (self.actor[:MAX_ACTOR], self.action, self.run_id, self.target, detail)


class DatabaseUnavailable(PgDurableError):
    """The dashboard cannot read the database: down, unreachable, or without the schema."""


class Reader:
    """One page's read-only transaction: named queries, and the engine time it began at."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], now: datetime) -> None:
        self.conn = conn
        self.now = now

    def rows(self, name: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
        # prepare=False: a plan per call, made for the filters actually given (queries.sql)
        return self.conn.execute(QUERIES[name], params, prepare=False).fetchall()

    def row(self, name: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
        found = self.rows(name, params)
        return found[0] if found else None


class Store:
    """The pool and the statements of one dashboard app. The pool opens on first use (an app
    mounted in another one gets no lifespan event) and the schema is checked then."""

    def __init__(self, dsn: str, *, statement_timeout: str = "10s", max_size: int = 4) -> None:
        self.dsn = dsn
        self.statement_timeout = statement_timeout
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] | None = None
        self._checked = False
        self._lock = threading.Lock()
        self._max_size = max_size

    def _open(self) -> ConnectionPool[psycopg.Connection[dict[str, Any]]]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self._max_size,
                    kwargs={
                        "autocommit": True,
                        "row_factory": dict_row,
                        "application_name": "pgdurable-dashboard",
                        "connect_timeout": 10,
                        # Never prepare server-side, whatever $PGDURABLE_POOLER says: pages
                        # are sent unprepared anyway (a plan per filter set) and actions come
                        # at human pace, so nothing is lost, and a prepared _pg3_N would
                        # collide behind a transaction pooler (docs/poolers.md).
                        "prepare_threshold": None,
                    },
                    connection_class=psycopg.Connection[dict[str, Any]],
                    name="pgdurable-dashboard",
                    open=False,
                    timeout=15,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        pool = self._open()
        try:
            with pool.connection() as conn:
                if not self._checked:
                    conn.row_factory = tuple_row  # type: ignore[assignment]
                    try:
                        check_schema(conn)
                    finally:
                        conn.row_factory = dict_row
                    self._checked = True
                yield conn
        except psycopg.errors.QueryCanceled as exc:
            raise DatabaseUnavailable(
                f"a query of this page ran longer than the dashboard's statement timeout "
                f"({self.statement_timeout}) and was cancelled: narrow the filters"
            ) from exc
        except psycopg.OperationalError as exc:
            if exc.sqlstate is not None and not is_connection_error(exc):
                raise
            raise DatabaseUnavailable(
                f"cannot reach the database ({_first_line(exc)}): check that PostgreSQL is up "
                "and the dashboard's DSN is right; the next request tries again"
            ) from exc
        except psycopg_pool.PoolTimeout as exc:
            raise DatabaseUnavailable(
                f"no database connection within 15 s ({_first_line(exc)}): check that "
                "PostgreSQL is up and accepts connections"
            ) from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[Reader]:
        """A read-only transaction with a statement timeout: no page can change anything, and
        no page can hold a backend longer than the timeout."""
        with self._connection() as conn, conn.transaction():
            row = conn.execute(
                QUERIES["begin_read"], (self.statement_timeout,), prepare=False
            ).fetchone()
            assert row is not None
            yield Reader(conn, row["now"])

    def act(
        self,
        name: str,
        params: Sequence[Any],
        audit: Callable[[Any], AuditEntry | None] | None = None,
        before: tuple[str, Sequence[Any]] | None = None,
    ) -> Any:
        """Run one engine function (an action) in its own transaction; its SQLSTATEs become
        pgdurable exceptions (RunNotFound, InvalidState, InvalidInput...). ``audit`` maps the
        function's result to the audit_log entry recorded in the same transaction (None: the
        action changed nothing, so nothing is recorded); a refused action records nothing.
        ``before``: a statement run first in the transaction; then ``audit`` gets the pair
        (its first value, the result), to tell a change from a no-op."""
        with self._connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(QUERIES["begin_action"], (self.statement_timeout,))
                    prior: Any = None
                    if before is not None:
                        found = conn.execute(QUERIES[before[0]], before[1]).fetchone()
                        prior = None if found is None else next(iter(found.values()))
                    row = conn.execute(QUERIES[name], params).fetchone()
                    result = None if row is None else next(iter(row.values()))
                    if before is not None:
                        result = (prior, result)
                    entry = audit(result) if audit is not None else None
                    if entry is not None:
                        conn.execute(QUERIES["record_action"], entry.params())
            except psycopg.Error as exc:
                mapped = translate(exc)
                if mapped is None:
                    raise
                raise mapped from exc
        return result

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
