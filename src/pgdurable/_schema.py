"""Installing, upgrading and verifying the database schema (sql/schema.sql, sql/migrations/).

Upgrades run the numbered migrations above the installed version (tables, columns, indexes),
then re-apply schema.sql, which replaces every function and view: the function layer always
matches the package exactly, and is verified against it (definitions and owners) before use.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import psycopg

from ._errors import SchemaMissing, SchemaOutdated, SchemaUntrusted
from ._queries import Q
from ._sqlfiles import read_sql, sql_dir

if TYPE_CHECKING:
    from typing_extensions import LiteralString

log = logging.getLogger("pgdurable.schema")

SCHEMA_VERSION = 5
SEARCH_PATH = "pg_catalog, pgdurable, pg_temp"

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_FUNCTION = re.compile(
    r"^create or replace function pgdurable\.(\w+)\(.*?\n(language \w+[^\n]*)\n"
    r"set search_path = ([^\n]+)\nas \$\$(.*?)\$\$;",
    re.MULTILINE | re.DOTALL,
)


def schema_sql() -> str:
    """The full text of sql/schema.sql, as `pgdurable init --print` shows it."""
    return read_sql("schema.sql")


def migrations() -> dict[int, str]:
    """{version: file name} of sql/migrations/NNNN_slug.sql; 0001 is the initial schema."""
    found: dict[int, str] = {}
    for path in sorted(sql_dir().joinpath("migrations").iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found[int(match.group(1))] = path.name
    return found


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    present = conn.execute(Q["schema_present"]).fetchone()
    if present is None or not present[0]:
        return None
    row = conn.execute(Q["schema_version"]).fetchone()
    return None if row is None else cast("int | None", row[0])


def init_schema(conn: psycopg.Connection[Any]) -> bool:
    """Create or upgrade the schema in one transaction. Returns False if it was already current.

    Refuses (SchemaUntrusted) a schema owned by another role or whose functions differ from
    the package's. Raises PermissionError naming the missing privilege when the role cannot
    create it. Applies sql/roles.sql (the client / worker / admin roles) every time.
    """
    with conn.transaction():
        # DDL resolves operators and types once, when it runs: only the catalog may answer.
        conn.execute(Q["pin_search_path"], (SEARCH_PATH,))
        conn.execute(Q["init_lock"])
        current = installed_version(conn)
        if current is not None:
            _refuse_foreign_owner(conn)
        if current is not None and current > SCHEMA_VERSION:
            raise SchemaOutdated(
                f"the database has pgdurable schema version {current}, newer than this package "
                f"({SCHEMA_VERSION}): upgrade the pgdurable package"
            )
        changed = current != SCHEMA_VERSION
        if current == SCHEMA_VERSION:
            verify_schema(conn)
        try:
            if current is not None:
                for version, name in sorted(migrations().items()):
                    if current < version <= SCHEMA_VERSION:
                        _execute_file(conn, f"migrations/{name}")
                        conn.execute(Q["record_version"], (version,))
            if changed:
                _execute_file(conn, "schema.sql")
            _apply_roles(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            info = conn.info
            raise PermissionError(
                f"role {info.user!r} may not create the pgdurable schema in database "
                f"{info.dbname!r} ({exc.diag.message_primary}). Run `pgdurable init` as the "
                f"database owner, or grant it: GRANT CREATE ON DATABASE {info.dbname} TO "
                f"{info.user};"
            ) from exc
        verify_schema(conn)
    return changed


def _apply_roles(conn: psycopg.Connection[Any]) -> None:
    """sql/roles.sql: the client / worker / admin roles and their grants. What it cannot do
    (no CREATEROLE) it says in notices, which reach the log instead of being dropped."""

    def forward(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if text.startswith("pgdurable roles:"):
            hint = f" ({diag.message_hint})" if diag.message_hint else ""
            log.warning("%s%s", text, hint)

    conn.add_notice_handler(forward)
    try:
        _execute_file(conn, "roles.sql")
    finally:
        conn.remove_notice_handler(forward)


def _execute_file(conn: psycopg.Connection[Any], name: str) -> None:
    # The SQL files ship with the package: literals loaded from disk, not user input.
    text: LiteralString = read_sql(name)
    conn.execute(text)


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """Raise SchemaMissing / SchemaOutdated / SchemaUntrusted unless the installed schema is
    this package's, current and intact. Returns its version."""
    version = installed_version(conn)
    if version is None:
        raise SchemaMissing(
            f"the pgdurable schema is not installed in database {conn.info.dbname!r}: "
            "run `pgdurable init --dsn ...` (or App.init_schema()) first"
        )
    if version < SCHEMA_VERSION:
        raise SchemaOutdated(
            f"the database has pgdurable schema version {version}, this package wants "
            f"{SCHEMA_VERSION}: run `pgdurable init` to upgrade it in place"
        )
    if version > SCHEMA_VERSION:
        raise SchemaOutdated(
            f"the database has pgdurable schema version {version}, newer than this package's "
            f"{SCHEMA_VERSION}: upgrade the pgdurable package"
        )
    with conn.transaction():
        conn.execute(Q["pin_search_path"], (SEARCH_PATH,))
        verify_schema(conn)
    return version


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Function:
    name: str
    security_definer: bool
    search_path: str | None
    body_digest: str


def expected_functions() -> list[_Function]:
    """The functions schema.sql defines, as the catalog must show them."""
    found = []
    for match in _FUNCTION.finditer(schema_sql()):
        name, language_line, path, body = match.groups()
        found.append(
            _Function(name, "security definer" in language_line, path.strip(), _digest(body))
        )
    return sorted(found, key=lambda f: (f.name, f.body_digest))


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def installed_functions(conn: psycopg.Connection[Any]) -> list[_Function]:
    found = []
    for name, secdef, config, body in conn.execute(Q["schema_functions"]).fetchall():
        path = next(
            (c.partition("=")[2] for c in config or () if c.startswith("search_path=")), None
        )
        found.append(_Function(name, secdef, path, _digest(body)))
    return sorted(found, key=lambda f: (f.name, f.body_digest))


def verify_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaUntrusted unless every function is the package's own, with its search_path
    pinned, every object has the schema's owner and no trigger hangs on its tables."""
    dbname = conn.info.dbname
    owners = conn.execute(Q["schema_owners"]).fetchall()
    schema_owner = next((o for kind, _, o in owners if kind == "schema"), None)
    strangers = [f"{kind} {name} (owner {o})" for kind, name, o in owners if o != schema_owner]
    if strangers:
        raise SchemaUntrusted(
            f"the pgdurable schema in database {dbname!r} is owned by {schema_owner!r}, but "
            f"{', '.join(strangers[:5])} belong to other roles: someone else can change what "
            "the engine runs. Inspect them; drop the schema if you did not create them"
        )
    superuser, current, owner_is_superuser = conn.execute(
        Q["schema_owner_rank"], (schema_owner,)
    ).fetchone() or (False, None, False)
    if superuser and schema_owner != current and not owner_is_superuser:
        raise SchemaUntrusted(
            f"the pgdurable schema in database {dbname!r} belongs to role {schema_owner!r}, "
            f"which is not a superuser, and you connect as superuser {current!r}: that role "
            "could make you run code of its choice. Connect as the owner, or drop the schema "
            "and run `pgdurable init` again"
        )
    expected, installed = expected_functions(), installed_functions(conn)
    if expected != installed:
        missing = sorted({f.name for f in expected} - {f.name for f in installed})
        changed = sorted({f.name for f in set(expected) ^ set(installed)} - set(missing))
        detail = "; ".join(
            part
            for part in (
                f"missing: {', '.join(missing)}" if missing else "",
                f"different from this package's: {', '.join(changed)}" if changed else "",
            )
            if part
        )
        raise SchemaUntrusted(
            f"the pgdurable functions in database {dbname!r} are not this package's ({detail}). "
            "They were changed by someone, or installed by another pgdurable release with the "
            "same schema version. Do not run workers against it: inspect pgdurable's functions, "
            "then drop the schema (drop schema pgdurable cascade) and run `pgdurable init`"
        )
    triggers = conn.execute(Q["schema_triggers"]).fetchall()
    if triggers:
        raise SchemaUntrusted(
            f"triggers that pgdurable did not create hang on its tables in database {dbname!r}: "
            f"{', '.join(f'{t} on {r}' for t, r in triggers)}. Drop them"
        )


def _refuse_foreign_owner(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(Q["schema_owner"]).fetchone()
    if row is not None and row[0] != row[1]:
        raise SchemaUntrusted(
            f"the pgdurable schema in database {conn.info.dbname!r} is owned by role {row[0]!r}, "
            f"not by {row[1]!r} who runs init: it may have been created to make you run code of "
            "its choice. Run init as its owner, or drop it (drop schema pgdurable cascade) if "
            "you did not create it"
        )
