"""The SQL API as a psql or Go user sees it: start, cancel and inspect runs with plain SQL; the
claim stays on its partial index; re-applying schema.sql changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.support import query, running_worker, scalar, shift_clock
from pgdurable._schema import init_schema, schema_sql


def test_run_started_from_plain_sql_runs_on_a_python_worker_and_reads_back_in_sql(
    app: pgdurable.App,
) -> None:
    @app.step()
    def add(a: int, b: int) -> int:
        return a + b

    @app.workflow(name="sql.add")
    def add_scaled(a: int, b: int, *, scale: int = 1) -> dict[str, int]:
        return {"total": add(a, b) * scale}

    dsn = app.dsn
    run_id = scalar(
        dsn,
        "select pgdurable.start_run('sql.add', "
        """'{"args": [2, 3], "kwargs": {"scale": 10}}', '{"workflow_id": "from-psql"}')""",
    )
    with running_worker(app):
        assert app.handle("from-psql").result(timeout=10) == {"total": 50}

    assert query(
        dsn,
        "select workflow_id, status, output, error, attempt from pgdurable.runs where id = %s",
        (run_id,),
    ) == [("from-psql", "completed", {"total": 50}, None, 1)]
    assert query(
        dsn,
        "select seq, step_key, kind, step_name, output, attempts, run_attempt "
        "from pgdurable.checkpoints where run_id = %s",
        (run_id,),
    ) == [(0, "add", "step", "add", 5, 1, 1)]
    assert query(
        dsn,
        "select workflow_name, status, checkpoints, error_type from pgdurable.run_overview",
    ) == [("sql.add", "completed", 1, None)]


def test_cancel_run_of_a_pending_run(app: pgdurable.App) -> None:
    dsn = app.dsn
    run_id = scalar(dsn, """select pgdurable.start_run('sql.later', '{}', '{"delay": 3600}')""")
    assert scalar(dsn, "select pgdurable.cancel_run(%s)", (run_id,)) == "cancelled"
    assert scalar(dsn, "select pgdurable.cancel_run(%s)", (run_id,)) == "cancelled"
    ((status, finished, error_type),) = query(
        dsn,
        "select status, finished_at is not null, error ->> 'type' from pgdurable.runs",
    )
    assert (status, finished, error_type) == ("cancelled", True, "Cancelled")
    with pytest.raises(pgdurable.RunCancelled):
        app.handle(run_id).result(timeout=5)
    shift_clock(dsn, "2 hours")
    assert query(dsn, "select id from pgdurable.claim_runs('w', array['default'], 10)") == []
    with pytest.raises(psycopg.Error) as info:
        query(dsn, "select pgdurable.cancel_run(%s)", (uuid.uuid4(),))
    assert info.value.sqlstate == "PD001"


def _catalog(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every object of schema pgdurable with its definition and oid (a drop + create shows)."""
    probes = {
        "relations": """
            select c.oid, c.relname, c.relkind,
                   case when c.relkind = 'i' then pg_get_indexdef(c.oid) end,
                   case when c.relkind = 'v' then pg_get_viewdef(c.oid) end
              from pg_class c where c.relnamespace = 'pgdurable'::regnamespace
             order by c.relname""",
        "columns": """
            select a.attrelid::regclass::text, a.attnum, a.attname, a.atttypid, a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid)
              from pg_attribute a
              join pg_class c on c.oid = a.attrelid
              left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
             where c.relnamespace = 'pgdurable'::regnamespace and a.attnum > 0
               and not a.attisdropped
             order by 1, 2""",
        "constraints": """
            select oid, conrelid::regclass::text, conname, pg_get_constraintdef(oid)
              from pg_constraint where connamespace = 'pgdurable'::regnamespace
             order by 2, 3""",
        "functions": """
            select p.oid, p.proname, pg_get_function_identity_arguments(p.oid),
                   md5(pg_get_functiondef(p.oid))
              from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace
             order by 2, 3""",
        "data": """
            select 'version', version::text, applied_at from pgdurable.schema_version
            union all
            select 'clock', offset_interval::text, null from pgdurable.clock
            order by 1, 2""",
    }
    return {name: conn.execute(sql).fetchall() for name, sql in probes.items()}


def test_applying_schema_sql_twice_changes_nothing(dsn: str) -> None:
    shift_clock(dsn, "5 minutes")  # state that a re-apply must keep
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = _catalog(conn)
        assert before["functions"] and before["relations"]
        with conn.transaction():
            conn.execute(schema_sql())  # type: ignore[arg-type]
        assert init_schema(conn) is False
        after = _catalog(conn)
    for part in before:
        assert after[part] == before[part], part
