"""Schema upgrades: version 1 databases (sql/migrations/0001_initial.sql) upgraded in place by
`pgdurable init` end up identical to a fresh install, and their live runs finish."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from apps.support import query, running_worker, scalar, wait_until
from conftest import ROOT, with_db
from pgdurable._schema import SCHEMA_VERSION, init_schema

V1 = (ROOT / "sql" / "migrations" / "0001_initial.sql").read_text()


@pytest.fixture
def empty_db(server_dsn: str) -> Iterator[str]:
    name = f"pgdurable_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_db(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def install_v1(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(V1)


def init(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return init_schema(conn)


CATALOG = {
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
          from pg_attribute a join pg_class c on c.oid = a.attrelid
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relnamespace = 'pgdurable'::regnamespace and a.attnum > 0
           and not a.attisdropped
         order by 1, 2""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          from pg_constraint where connamespace = 'pgdurable'::regnamespace order by 1, 2""",
    "indexes": """
        select indexname, indexdef from pg_indexes where schemaname = 'pgdurable' order by 1""",
    "functions": """
        select proname, pg_get_function_identity_arguments(oid), pg_get_function_result(oid),
               prosecdef, proconfig, md5(prosrc)
          from pg_proc where pronamespace = 'pgdurable'::regnamespace order by 1, 2""",
    "views": """
        select viewname, definition from pg_views where schemaname = 'pgdurable' order by 1""",
    "settings": "select * from pgdurable.settings",
}


def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in CATALOG.items()}


def test_upgraded_database_matches_a_fresh_install(dsn: str, empty_db: str) -> None:
    install_v1(empty_db)
    assert scalar(empty_db, "select max(version) from pgdurable.schema_version") == 1
    assert init(empty_db) is True
    assert scalar(empty_db, "select max(version) from pgdurable.schema_version") == SCHEMA_VERSION
    upgraded, fresh = catalog(empty_db), catalog(dsn)
    fresh["settings"] = [
        (*row[:1], False, *row[2:]) for row in fresh["settings"]
    ]  # the test template turns the clock switch on; a real install has it off
    for part in CATALOG:
        assert upgraded[part] == fresh[part], f"{part} differ after the upgrade"
    assert init(empty_db) is False, "re-running init on a current schema must be a no-op"
    assert catalog(empty_db) == upgraded


def v1_claim(conn: psycopg.Connection[Any], worker: str) -> tuple[Any, int]:
    """Claim one run with version 1's claim_runs, as a worker of the old release would."""
    run_id, attempt = conn.execute(
        "select id, attempt from pgdurable.claim_runs(%s, array['default'], 1, 30)", (worker,)
    ).fetchone()
    return run_id, attempt


def start(conn: psycopg.Connection[Any], name: str, workflow_id: str, **opts: Any) -> Any:
    options = {"workflow_id": workflow_id, **opts}
    return conn.execute(
        "select pgdurable.start_run(%s, %s::jsonb, %s::jsonb)",
        (name, '{"args": [], "kwargs": {}}', json.dumps(options)),
    ).fetchone()[0]


def checkpoint(
    conn: psycopg.Connection[Any],
    run_id: Any,
    attempt: int,
    seq: int,
    key: str,
    kind: str,
    output: Any,
) -> None:
    conn.execute(
        "select pgdurable.record_checkpoint(%s, %s, %s, %s, %s, %s, %s::jsonb)",
        (run_id, attempt, seq, key, kind, key, json.dumps(output)),
    )


def build_app(dsn: str, ran: list[str]) -> pgdurable.App:
    app = pgdurable.App(dsn, lease=2.0)

    @app.step(name="s1")
    def s1() -> str:
        ran.append("s1")
        return "one"

    @app.step(name="s2")
    def s2() -> str:
        ran.append("s2")
        return "two"

    @app.workflow(name="mig.pending")
    def pending() -> str:
        return s1()

    @app.workflow(name="mig.running")
    def running() -> list[str]:
        return [s1(), s2()]

    @app.workflow(name="mig.sleeper")
    def sleeper() -> str:
        pgdurable.sleep(60)
        return "slept"

    @app.workflow(name="mig.waiter")
    def waiter() -> Any:
        return pgdurable.wait_for_event("mig.approved")

    @app.workflow(name="mig.child")
    def child() -> str:
        return "child done"

    @app.workflow(name="mig.parent")
    def parent() -> str:
        return "parent got " + child()

    return app


@pytest.mark.slow
def test_live_runs_of_every_state_finish_after_an_upgrade(empty_db: str) -> None:
    dsn = empty_db
    install_v1(dsn)
    with psycopg.connect(dsn, autocommit=True) as v1:
        # claims take the oldest pending run: start and claim one at a time
        ids = {"running": start(v1, "mig.running", "m-running")}
        run_id, running_attempt = v1_claim(v1, "old-worker")
        assert run_id == ids["running"]
        checkpoint(v1, run_id, running_attempt, 0, "s1", "step", "one")

        ids["sleeper"] = start(v1, "mig.sleeper", "m-sleeper")
        run_id, attempt = v1_claim(v1, "old-worker")
        v1.execute("select pgdurable.sleep_run(%s, %s, 0, 'sleep', 60)", (run_id, attempt))
        ids["waiter"] = start(v1, "mig.waiter", "m-waiter")
        run_id, attempt = v1_claim(v1, "old-worker")
        v1.execute(
            "select pgdurable.wait_event(%s, %s, 0, 'mig.approved', 'mig.approved')",
            (run_id, attempt),
        )
        ids["parent"] = start(v1, "mig.parent", "m-parent")
        parent_id, attempt = v1_claim(v1, "old-worker")
        ids["child"] = start(v1, "mig.child", "m-parent/mig.child", parent_id=str(parent_id))
        checkpoint(
            v1,
            parent_id,
            attempt,
            0,
            "mig.child",
            "child",
            {"run_id": str(ids["child"]), "workflow_id": "m-parent/mig.child"},
        )
        v1.execute(
            "select pgdurable.wait_run(%s, %s, 1, 'mig.child', %s)",
            (parent_id, attempt, ids["child"]),
        )
        ids["pending"] = start(v1, "mig.pending", "m-pending")
    states = dict(query(dsn, "select workflow_id, status from pgdurable.runs"))
    assert states == {
        "m-pending": "pending",
        "m-running": "running",
        "m-sleeper": "sleeping",
        "m-waiter": "waiting",
        "m-parent": "waiting",
        "m-parent/mig.child": "pending",
    }

    # The old worker is inside a transaction on its running run while init upgrades: the
    # upgrade waits for it, and its fenced writes keep working on the new schema.
    with psycopg.connect(dsn) as old_worker:
        checkpoint(old_worker, ids["running"], running_attempt, 1, "s2", "step", "two")
        upgrade = threading.Thread(target=init, args=(dsn,))
        upgrade.start()
        wait_until(
            "init to wait for the old worker's transaction",
            lambda: scalar(
                dsn,
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and wait_event_type = 'Lock'",
            ),
        )
        old_worker.commit()
        upgrade.join(60)
        assert not upgrade.is_alive()
        old_worker.execute(
            "select * from pgdurable.heartbeat('old-worker', array[%s]::uuid[], array[%s], 30)",
            (ids["running"], running_attempt),
        )
        old_worker.commit()
    assert scalar(dsn, "select max(version) from pgdurable.schema_version") == SCHEMA_VERSION
    query(dsn, "update pgdurable.settings set allow_clock_shift = true")

    ran: list[str] = []
    app = build_app(dsn, ran)
    # the old worker vanishes: its lease lapses; sleepers wake; the event arrives. (The clock
    # moves before the new worker starts, or it would expire that worker's own fresh leases.)
    query(dsn, "select pgdurable.shift_clock('2 minutes')")
    app.emit_event("mig.approved", {"by": "ann"})
    try:
        with running_worker(app, poll_interval=0.1):
            expected = {
                "pending": "one",
                "running": ["one", "two"],
                "sleeper": "slept",
                "waiter": {"by": "ann"},
                "child": "child done",
                "parent": "parent got child done",
            }
            for state, result in expected.items():
                assert app.handle(ids[state]).result(timeout=20) == result, state
    finally:
        app.close()
    # the old worker's checkpoints were replayed, not re-run; only the pending run's step ran
    assert sorted(ran) == ["s1"]
    assert (
        scalar(dsn, "select recoveries from pgdurable.runs where id = %s", (ids["running"],)) == 1
    )


def test_check_names_the_upgrade_to_run(empty_db: str) -> None:
    install_v1(empty_db)
    with (
        psycopg.connect(empty_db, autocommit=True) as conn,
        pytest.raises(
            pgdurable.SchemaOutdated,
            match=rf"version 1, this package wants {SCHEMA_VERSION}: run `pgdurable init`",
        ),
    ):
        pgdurable._schema.check_schema(conn)


def test_migration_files_are_numbered_without_gaps() -> None:
    from pgdurable._schema import migrations

    found = migrations()
    assert sorted(found) == list(range(1, SCHEMA_VERSION + 1))
    assert all(Path(ROOT / "sql" / "migrations" / n).read_text().strip() for n in found.values())
