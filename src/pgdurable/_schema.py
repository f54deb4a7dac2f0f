"""Installing and checking the database schema (sql/schema.sql)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import psycopg

from ._errors import SchemaMissing, SchemaOutdated
from ._queries import Q
from ._sqlfiles import read_sql

if TYPE_CHECKING:
    from typing_extensions import LiteralString

SCHEMA_VERSION = 1


def schema_sql() -> str:
    """The full text of sql/schema.sql, as `pgdurable init --print` shows it."""
    return read_sql("schema.sql")


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    present = conn.execute(Q["schema_present"]).fetchone()
    if present is None or not present[0]:
        return None
    row = conn.execute(Q["schema_version"]).fetchone()
    return None if row is None else cast("int | None", row[0])


def init_schema(conn: psycopg.Connection[Any]) -> bool:
    """Create or upgrade the schema in one transaction. Returns False if it was already current.

    Raises PermissionError naming the missing privilege when the role cannot create it.
    """
    with conn.transaction():
        conn.execute(Q["init_lock"])
        current = installed_version(conn)
        if current == SCHEMA_VERSION:
            return False
        if current is not None and current > SCHEMA_VERSION:
            raise SchemaOutdated(
                f"the database has pgdurable schema version {current}, newer than this package "
                f"({SCHEMA_VERSION}): upgrade the pgdurable package"
            )
        try:
            # The schema file is shipped with the package: a literal, loaded from disk.
            sql_text: LiteralString = schema_sql()
            conn.execute(sql_text)
        except psycopg.errors.InsufficientPrivilege as exc:
            info = conn.info
            raise PermissionError(
                f"role {info.user!r} may not create the pgdurable schema in database "
                f"{info.dbname!r} ({exc.diag.message_primary}). Run `pgdurable init` as the "
                f"database owner, or grant it: GRANT CREATE ON DATABASE {info.dbname} TO "
                f"{info.user};"
            ) from exc
    return True


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """Raise SchemaMissing / SchemaOutdated unless the installed schema matches this package."""
    version = installed_version(conn)
    if version is None:
        raise SchemaMissing(
            f"the pgdurable schema is not installed in database {conn.info.dbname!r}: "
            "run `pgdurable init --dsn ...` (or App.init_schema()) first"
        )
    if version != SCHEMA_VERSION:
        newer = "older" if version < SCHEMA_VERSION else "newer"
        raise SchemaOutdated(
            f"the database has pgdurable schema version {version}, {newer} than this package's "
            f"{SCHEMA_VERSION}: run `pgdurable init` to upgrade"
            if version < SCHEMA_VERSION
            else f"the database has pgdurable schema version {version}, {newer} than this "
            f"package's {SCHEMA_VERSION}: upgrade the pgdurable package"
        )
    return version
