"""The schema trusts nothing it does not own (issue 7, section 2; docs/security.md).

- A role with CREATE on ``public`` defines exact-type overloads of the built-ins and operators the
  engine uses; a whole workload runs as a superuser with the default search_path and none of
  them ever executes.
- A ``pgdurable`` schema pre-created by another role, or a function changed after init, makes
  ``check`` fail and ``init`` refuse, and the SDK runs none of its functions.
- The roles of sql/roles.sql: client, worker and admin logins each do what docs/security.md
  says and nothing more; no role writes a table, so a forged "completed" run is impossible.
- ``shift_clock`` is refused unless the documented switch is on.
- Every function pins its search_path; the statements the SDK sends qualify what they call.

Roles are cluster-wide: every role a test creates has a unique name and is dropped after it.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import pgdurable
from apps.support import query, running_worker, scalar, shift_clock, wait_status, wait_until
from conftest import ROOT, with_db
from pgdurable._queries import Q
from pgdurable._schema import init_schema
from pgdurable_cli.main import cli

SEARCH_PATH = "search_path=pg_catalog, pgdurable, pg_temp"
GROUPS = ("pgdurable_client", "pgdurable_worker", "pgdurable_admin")

# What each role may execute, each list adding to the one before (docs/security.md).
CLIENT_CALLS = {
    "start_run",
    "start_runs",
    "cancel_run",
    "emit_event",
    "send_message",
    "read_stream",
    "now",
    "pause_run",
    "record_action",
}
WORKER_CALLS = CLIENT_CALLS | {
    "claim_runs",
    "claim_run",
    "record_checkpoint",
    "complete_run",
    "fail_run",
    "finish_cancel",
    "schedule_retry",
    "sleep_run",
    "release_run",
    "heartbeat",
    "wait_event",
    "recv_message",
    "wait_run",
    "record_compensation",
    "tick",
    "tick_due",
    "register_worker",
    "unregister_worker",
    "write_stream",
    "close_stream",
    "configure_queue",
    "upsert_schedule",
    "due_schedules",
    "fire_schedule",
    "purge_expired",
    "set_retention",
    "park_run",
}
ADMIN_CALLS = WORKER_CALLS | {
    "gc_runs",
    "shift_clock",
    "resume_run",
    "retry_run",
    "fork_run",
    "pause_queue",
    "resume_queue",
    "reset_queue",
    "trigger_schedule",
    "pause_schedule",
    "resume_schedule",
    "delete_schedule",
}
CALLS = {"pgdurable_client": CLIENT_CALLS, "pgdurable_worker": WORKER_CALLS}
CALLS["pgdurable_admin"] = ADMIN_CALLS
CLIENT_READS = {
    "runs",
    "checkpoints",
    "timers",
    "events",
    "streams",
    "workflows",
    "workers",
    "settings",
    "schema_version",
    "run_overview",
    "unserved_runs",
    "queues",
    "queue_overview",
    "schedules",
    "retention",
}
READS = {"pgdurable_client": CLIENT_READS, "pgdurable_worker": CLIENT_READS}
READS["pgdurable_admin"] = CLIENT_READS | {"messages", "clock", "queue_keys", "audit_log"}


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def as_user(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    return make_conninfo(**params)


def denied(dsn: str, statement: Any, params: Any = None) -> bool:
    """Whether the server refuses ``statement`` for lack of privilege."""
    try:
        query(dsn, statement, params)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def enable_clock_shift(dsn: str) -> None:
    """The test template enables it; say so explicitly where a test relies on it."""
    if scalar(dsn, "select to_regclass('pgdurable.settings') is not null"):
        query(dsn, "update pgdurable.settings set allow_clock_shift = true")


class Roles:
    """LOGIN roles with unique names, dropped (with their grants) when the test ends."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.made: list[tuple[str, str]] = []

    def create(self, prefix: str, db_dsn: str, *member_of: str) -> str:
        name = f"pgd_{prefix}_{uuid.uuid4().hex[:10]}"
        self.adopt(name, db_dsn)
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
            for group in member_of:
                conn.execute(
                    sql.SQL("grant {} to {}").format(sql.Identifier(group), sql.Identifier(name))
                )
        return name

    def adopt(self, name: str, db_dsn: str) -> None:
        """Drop ``name`` after the test, and what it owns or was granted in ``db_dsn``."""
        self.made.append((name, db_dsn))

    def drop(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            existing = {r[0] for r in conn.execute("select datname from pg_database")}
        for name, db_dsn in self.made:
            if conninfo_to_dict(db_dsn).get("dbname") in existing:
                with psycopg.connect(db_dsn, autocommit=True) as conn:
                    if conn.execute("select to_regrole(%s)", (name,)).fetchone() != (None,):
                        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            for name, _ in self.made:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@pytest.fixture
def roles(server_dsn: str) -> Iterator[Roles]:
    made = Roles(server_dsn)
    yield made
    made.drop()


@pytest.fixture
def empty_db(server_dsn: str) -> Iterator[str]:
    """A new database without the pgdurable schema."""
    name = f"pgdurable_sec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_db(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


# --- 1. overloads in public never run --------------------------------------------------------

LOG = "public.attack_log"


def _record(label: str) -> str:
    return f"insert into {LOG} (what, by_role) values ($l${label}$l$, current_user::text);"


def _function(name: str, args: str, returns: str, body: str, probe: str) -> tuple[str, str, str]:
    label = f"{name}({args})"
    ddl = (
        f"create function public.{name}({args}) returns {returns} language sql "
        f"as $f$ {_record(label)} {body} $f$"
    )
    return label, ddl, probe


def _aggregate(name: str, arg: str, state: str, step: str, probe: str) -> tuple[str, str, str]:
    label = f"aggregate {name}({arg})"
    sfunc = f"public.attack_{name}_{arg.replace('[]', '_array')}_step"
    ddl = (
        f"create function {sfunc}(s {state}, v {arg}) returns {state} language sql "
        f"as $f$ {_record(label)} select {step} $f$; "
        f"create aggregate public.{name}({arg}) (sfunc = {sfunc}, stype = {state})"
    )
    return label, ddl, probe


def _operator(op: str, left: str, right: str, returns: str, body: str) -> tuple[str, str, str]:
    label = f"operator {op}({left}, {right})"
    fn = f"public.attack_op_{uuid.uuid4().hex[:8]}"
    ddl = (
        f"create function {fn}({left}, {right}) returns {returns} language sql "
        f"as $f$ {_record(label)} select {body} $f$; "
        f"create operator public.{op} (leftarg = {left}, rightarg = {right}, function = {fn})"
    )
    sample = {"text": "'a'::text", "uuid": "gen_random_uuid()", "integer": "1"}
    sample |= {"timestamptz": "now()", "text[]": "array['a']::text[]"}
    return label, ddl, f"select {sample[left]} {op} {sample[right]}"


# Each wins over the built-in for an unqualified call in a session whose search_path holds public
# (exact argument types beat polymorphic ones): the probe proves it before the workload runs.
OVERLOADS = [
    _function(
        "cardinality",
        "text[]",
        "integer",
        "select pg_catalog.cardinality($1)",
        "select cardinality(array['a']::text[])",
    ),
    _function(
        "cardinality",
        "uuid[]",
        "integer",
        "select pg_catalog.cardinality($1)",
        "select cardinality(array[gen_random_uuid()])",
    ),
    _function(
        "cardinality",
        "jsonb[]",
        "integer",
        "select pg_catalog.cardinality($1)",
        "select cardinality(array['1'::jsonb])",
    ),
    _function(
        "unnest",
        "text[]",
        "setof text",
        "select pg_catalog.unnest($1)",
        "select unnest(array['a']::text[])",
    ),
    _function(
        "unnest",
        "uuid[]",
        "setof uuid",
        "select pg_catalog.unnest($1)",
        "select unnest(array[gen_random_uuid()])",
    ),
    _function(
        "unnest",
        "integer[]",
        "setof integer",
        "select pg_catalog.unnest($1)",
        "select unnest(array[1])",
    ),
    _function(
        "unnest",
        "jsonb[]",
        "setof jsonb",
        "select pg_catalog.unnest($1)",
        "select unnest(array['1'::jsonb])",
    ),
    _function(
        "array_length",
        "text[], integer",
        "integer",
        "select pg_catalog.array_length($1, $2)",
        "select array_length(array['a']::text[], 1)",
    ),
    _function(
        "array_append",
        "text[], text",
        "text[]",
        "select pg_catalog.array_append($1, $2)",
        "select array_append(array['a']::text[], 'b'::text)",
    ),
    _function(
        "array_position",
        "text[], text",
        "integer",
        "select pg_catalog.array_position($1, $2)",
        "select array_position(array['a']::text[], 'a'::text)",
    ),
    _function(
        "pg_advisory_xact_lock",
        "integer",
        "void",
        "select pg_catalog.pg_advisory_xact_lock($1::bigint)",
        "select pg_advisory_xact_lock(hashtext('x'))",
    ),
    _function(
        "pg_try_advisory_xact_lock",
        "integer",
        "boolean",
        "select pg_catalog.pg_try_advisory_xact_lock($1::bigint)",
        "select pg_try_advisory_xact_lock(hashtext('x'))",
    ),
    _function(
        "jsonb_build_object",
        "text, text",
        "jsonb",
        "select pg_catalog.jsonb_build_object($1, $2)",
        "select jsonb_build_object('a', 'b'::text)",
    ),
    _function(
        "jsonb_build_object",
        "text, uuid",
        "jsonb",
        "select pg_catalog.jsonb_build_object($1, $2)",
        "select jsonb_build_object('a', gen_random_uuid())",
    ),
    _function(
        "jsonb_build_object",
        "text, timestamptz",
        "jsonb",
        "select pg_catalog.jsonb_build_object($1, $2)",
        "select jsonb_build_object('a', now())",
    ),
    _function(
        "to_jsonb",
        "text",
        "jsonb",
        "select pg_catalog.to_jsonb($1)",
        "select to_jsonb('a'::text)",
    ),
    _function(
        "to_jsonb",
        "uuid",
        "jsonb",
        "select pg_catalog.to_jsonb($1)",
        "select to_jsonb(gen_random_uuid())",
    ),
    _aggregate(
        "array_agg",
        "uuid",
        "uuid[]",
        "pg_catalog.array_append(s, v)",
        "select array_agg(gen_random_uuid())",
    ),
    _aggregate(
        "array_agg",
        "text",
        "text[]",
        "pg_catalog.array_append(s, v)",
        "select array_agg('a'::text)",
    ),
    _aggregate(
        "array_agg",
        "integer",
        "integer[]",
        "pg_catalog.array_append(s, v)",
        "select array_agg(1)",
    ),
    _aggregate(
        "jsonb_agg",
        "jsonb",
        "jsonb",
        "coalesce(s, '[]'::jsonb) operator(pg_catalog.||) pg_catalog.jsonb_build_array(v)",
        "select jsonb_agg('1'::jsonb)",
    ),
    _operator("||", "text", "uuid", "text", "$1 operator(pg_catalog.||) $2::text"),
    _operator("||", "uuid", "text", "text", "$1::text operator(pg_catalog.||) $2"),
    _operator("||", "text", "integer", "text", "$1 operator(pg_catalog.||) $2::text"),
    _operator("||", "text", "timestamptz", "text", "$1 operator(pg_catalog.||) $2::text"),
    _operator("=", "uuid", "text", "boolean", "$1::text operator(pg_catalog.=) $2"),
    _operator("=", "text", "uuid", "boolean", "$1 operator(pg_catalog.=) $2::text"),
    _operator("&&", "text[]", "text[]", "boolean", "$1 operator(pg_catalog.&&) $2"),
    _operator("@>", "text[]", "text[]", "boolean", "$1 operator(pg_catalog.@>) $2"),
    _operator("<@", "text[]", "text[]", "boolean", "$1 operator(pg_catalog.<@) $2"),
]


def hits(dsn: str) -> list[tuple[str, str, int]]:
    return [
        (r[0], r[1], r[2])
        for r in query(
            dsn,
            f"select what, by_role, count(*)::int from {LOG} group by 1, 2 order by 1, 2",
        )
    ]


def plant_overloads(db: str, attacker: str) -> None:
    query(db, sql.SQL("grant create on schema public to {}").format(sql.Identifier(attacker)))
    with psycopg.connect(as_user(db, attacker), autocommit=True) as conn:
        conn.execute(f"create table {LOG} (what text not null, by_role text not null)")
        conn.execute(f"grant insert, select on {LOG} to public")
        for _, ddl, _ in OVERLOADS:
            conn.execute(ddl.encode())
    # Each overload really is what an unqualified call in a default session resolves to: an
    # empty log after the workload then means the engine never made such a call.
    for _, _, probe in OVERLOADS:
        query(db, probe.encode())
    assert {h[0] for h in hits(db)} == {label for label, _, _ in OVERLOADS}
    query(db, f"truncate {LOG}")


@pytest.mark.slow
def test_overloads_planted_in_public_never_run_during_a_full_workload(
    empty_db: str, roles: Roles, tmp_path: Path
) -> None:
    db = empty_db
    attacker = roles.create("attacker", db)
    plant_overloads(db, attacker)
    assert "public" in scalar(db, "show search_path"), "the victim must have public in its path"

    # a fresh install, then everything else, with the overloads in place
    installed = run_cli("init", "--dsn", db)
    assert installed.exit_code == 0, installed.output
    enable_clock_shift(db)
    query(db, "create table public.sec_effects (key text primary key, value integer not null)")

    app = pgdurable.App(db, lease=2.0)
    gate = tmp_path / "gate"

    @app.step()
    def double(n: int) -> int:
        return 2 * n

    flaky_calls: list[int] = []

    @app.step(retry=pgdurable.Retry(max_attempts=2, initial_delay=600, jitter=False))
    def flaky() -> str:
        flaky_calls.append(1)
        if len(flaky_calls) == 1:
            raise RuntimeError("first call fails")
        return "second call works"

    @app.transaction()
    def remember(conn: psycopg.Connection[Any], key: str, value: int) -> None:
        conn.execute("insert into public.sec_effects (key, value) values (%s, %s)", (key, value))

    @app.step()
    def held() -> str:
        wait_until("the test to open the gate", gate.exists, timeout=60, every=0.01)
        return "released"

    @app.workflow(name="sec.kid")
    def kid(n: int) -> int:
        return double(n)

    @app.workflow(name="sec.slow")
    def slow() -> str:
        return held()

    @app.workflow(name="sec.boom")
    def boom() -> None:
        raise ValueError("boom on purpose")

    @app.workflow(name="sec.everything", queue="sec")
    def everything(key: str) -> dict[str, Any]:
        a = double(21)
        remember(key, a)
        pgdurable.sleep(3600)
        retried = flaky()
        event = pgdurable.wait_for_event(f"go:{key}")
        message = pgdurable.recv("box")
        child = kid(a)
        return {"a": a, "retried": retried, "event": event, "message": message, "child": child}

    try:
        main = everything.options(workflow_id="everything-1").start("k1")
        batch = kid.start_many([(1,), (2,)], workflow_ids=["kid-1", "kid-2"])
        later = kid.options(delay=3600).start(5)
        assert later.cancel() == "cancelled"
        assert kid(7) == 14  # runs here: claim_run

        with running_worker(app, queues=["default", "sec"]):
            wait_status(db, main.run_id, "sleeping")
            shift_clock(db, "2 hours")
            wait_until("the step retry to be scheduled", lambda: len(flaky_calls) == 1)
            wait_status(db, main.run_id, "sleeping")
            shift_clock(db, "20 minutes")
            wait_status(db, main.run_id, "waiting")
            app.emit_event("go:k1", {"ok": True})
            wait_until(
                "the run to wait for its message",
                lambda: (
                    scalar(db, "select wait_for from pgdurable.runs where id = %s", (main.run_id,))
                    == "message:box"
                ),
            )
            app.send("everything-1", "hello", topic="box")
            assert main.result(timeout=30) == {
                "a": 42,
                "retried": "second call works",
                "event": {"ok": True},
                "message": "hello",
                "child": 84,
            }
            assert [h.result(timeout=30) for h in batch] == [2, 4]
            with pytest.raises(pgdurable.WorkflowFailed):
                boom.start().result(timeout=30)

            # a long step on a short lease: the heartbeat must extend it at least once
            held_run = slow.start()
            wait_status(db, held_run.run_id, "running")
            lease = "select lease_expires_at from pgdurable.runs where id = %s"
            first = scalar(db, lease, (held_run.run_id,))
            wait_until(
                "a heartbeat to extend the lease",
                lambda: (scalar(db, lease, (held_run.run_id,)) or first) > first,
            )
            gate.touch()
            assert held_run.result(timeout=30) == "released"

        assert query(db, "select key, value from public.sec_effects") == [("k1", 42)]
        assert query(db, "select status from pgdurable.run_overview where id = %s", (main.run_id,))
        if scalar(db, "select to_regclass('pgdurable.unserved_runs') is not null"):
            query(db, "select * from pgdurable.unserved_runs")
        shift_clock(db, "2 days")
        assert scalar(db, "select pgdurable.gc_runs('1 day'::interval)") >= 6
        assert app.init_schema() is False
        for args in (("init",), ("check",), ("runs",)):
            result = run_cli(*args, "--dsn", db)
            assert result.exit_code == 0, result.output
    finally:
        app.close()

    ran = hits(db)
    assert ran == [], f"the attacker's overloads ran (what, as role, times): {ran}"


# --- 2. a schema the engine did not install -----------------------------------------------------


def _outcome_of_start(app: pgdurable.App) -> BaseException | None:
    try:
        app.start("shop.order", ["o-1"], allow_unregistered=True)
    except Exception as exc:
        return exc
    return None


def test_a_schema_pre_created_by_another_role_is_refused(empty_db: str, roles: Roles) -> None:
    rogue = roles.create("rogue", empty_db)
    query(
        empty_db,
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(str(conninfo_to_dict(empty_db)["dbname"])), sql.Identifier(rogue)
        ),
    )
    with psycopg.connect(as_user(empty_db, rogue), autocommit=True) as conn:
        conn.execute("create schema pgdurable")
        conn.execute(
            "create table pgdurable.schema_version (version integer primary key, "
            "applied_at timestamptz not null default now())"
        )
        conn.execute(
            "insert into pgdurable.schema_version (version) select generate_series(1, %s)",
            (pgdurable.SCHEMA_VERSION,),
        )
        conn.execute("create table pgdurable.rogue_calls (by_role text not null)")
        conn.execute(
            "create function pgdurable.start_run(p_workflow_name text, p_input jsonb default "
            "'{}', p_options jsonb default '{}') returns uuid language sql as $$ "
            "insert into pgdurable.rogue_calls (by_role) values (current_user::text); "
            "select gen_random_uuid() $$"
        )
        conn.execute("grant usage on schema pgdurable to public")
        conn.execute("grant select on all tables in schema pgdurable to public")
        conn.execute("grant insert on pgdurable.rogue_calls to public")

    check = run_cli("check", "--dsn", empty_db)
    assert check.exit_code == 1, check.output
    assert rogue in check.output and "Traceback" not in check.output
    init = run_cli("init", "--dsn", empty_db)
    assert init.exit_code == 1, init.output
    assert rogue in init.output and "Traceback" not in init.output
    # init changed nothing: the schema is still the rogue's, with no engine in it
    assert (
        scalar(
            empty_db, "select nspowner::regrole::text from pg_namespace where nspname = 'pgdurable'"
        )
        == rogue
    )
    assert scalar(empty_db, "select to_regclass('pgdurable.runs')") is None

    app = pgdurable.App(empty_db)
    try:
        raised = _outcome_of_start(app)
    finally:
        app.close()
    assert query(empty_db, "select by_role from pgdurable.rogue_calls") == [], "rogue start_run ran"
    assert isinstance(raised, pgdurable.SchemaUntrusted), repr(raised)
    assert rogue in str(raised)


def test_a_function_changed_after_init_is_refused(dsn: str) -> None:
    query(dsn, "create table public.tamper_log (by_role text not null)")
    query(
        dsn,
        "create or replace function pgdurable.start_run(p_workflow_name text, p_input jsonb "
        """default '{"args": [], "kwargs": {}}', p_options jsonb default '{}') returns uuid """
        "language plpgsql security definer set search_path = pg_catalog, pgdurable, pg_temp "
        "as $$ begin insert into public.tamper_log values (session_user::text); "
        "return gen_random_uuid(); end $$",
    )
    check = run_cli("check", "--dsn", dsn)
    assert check.exit_code == 1, check.output
    assert "start_run" in check.output and "Traceback" not in check.output
    init = run_cli("init", "--dsn", dsn)
    assert init.exit_code == 1, init.output
    assert "start_run" in init.output and "Traceback" not in init.output

    app = pgdurable.App(dsn)
    try:
        raised = _outcome_of_start(app)
    finally:
        app.close()
    assert query(dsn, "select by_role from public.tamper_log") == [], "tampered start_run ran"
    assert isinstance(raised, pgdurable.SchemaUntrusted), repr(raised)


def test_a_stored_error_type_never_imports_a_module(
    app: pgdurable.App, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's error type is data: a module it names is never imported (a planted
    module in the worker's import path would run as the worker)."""
    module = f"pgd_planted_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "class Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    @app.step()
    def charge() -> str:
        return "charged"

    @app.workflow(name="sec.replay")
    def replay() -> str:
        return charge()

    handle = replay.options(delay=3600).start()
    query(
        dsn,
        "insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, error, "
        "run_attempt, completed_at) values (%s, 'charge', 0, 'step', 'charge', %s, 0, now())",
        (handle.run_id, Jsonb({"type": f"{module}.Boom", "message": "forged", "traceback": None})),
    )
    query(dsn, "update pgdurable.runs set available_at = now() where id = %s", (handle.run_id,))
    with running_worker(app), pytest.raises(pgdurable.WorkflowFailed) as failed:
        handle.result(timeout=30)
    assert not marker.exists() and module not in sys.modules, "the stored type was imported"
    assert f"{module}.Boom" in str(failed.value)


# --- 3. least privilege: client, worker, admin -------------------------------------------------


def test_the_roles_hold_exactly_their_documented_privileges(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute(
        "select rolname, rolcanlogin from pg_roles where rolname = any(%s) order by 1",
        (list(GROUPS),),
    ).fetchall() == sorted((g, False) for g in GROUPS)

    functions = conn.execute(
        "select p.proname::text, p.oid::regprocedure::text, p.prosecdef, p.proacl::text[] "
        "from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace order by 2"
    ).fetchall()
    assert functions
    wrong: list[str] = []
    for name, signature, secdef, acl in functions:
        if not name.startswith("_") and name not in ADMIN_CALLS:
            wrong.append(f"{signature} is API (no leading _) but no role may call it")
        if acl is None or any(item.startswith("=") for item in acl):
            wrong.append(f"PUBLIC may execute {signature} (acl {acl})")
        for group in GROUPS:
            may = conn.execute(
                "select has_function_privilege(%s, %s::regprocedure, 'execute')",
                (group, signature),
            ).fetchone()
            should = name in CALLS[group]
            if may != (should,):
                wrong.append(f"{group} {'may not' if should else 'may'} execute {signature}")
        if name in ADMIN_CALLS and not secdef:
            wrong.append(f"{signature} is granted to a role but is not SECURITY DEFINER")

    relations = conn.execute(
        "select c.relname::text, c.oid::regclass::text, c.relacl::text[] "
        "from pg_class c where c.relnamespace = 'pgdurable'::regnamespace "
        "and c.relkind in ('r', 'v', 'm', 'S', 'p', 'f') order by 1"
    ).fetchall()
    for name, rel, acl in relations:
        # a NULL relacl is the owner alone; a NULL proacl (above) includes PUBLIC
        if any(item.startswith("=") for item in acl or ()):
            wrong.append(f"PUBLIC has privileges on {rel} (acl {acl})")
        for group in GROUPS:
            writes = conn.execute(
                "select has_table_privilege(%s, %s::regclass, "
                "'insert, update, delete, truncate, references, trigger')",
                (group, rel),
            ).fetchone()
            if writes != (False,):
                wrong.append(f"{group} may write {rel}")
            reads = conn.execute(
                "select has_table_privilege(%s, %s::regclass, 'select')", (group, rel)
            ).fetchone()
            if reads != (name in READS[group],):
                wrong.append(f"{group} {'may not' if name in READS[group] else 'may'} read {rel}")
    assert wrong == [], "\n".join(wrong)


def test_a_client_starts_cancels_emits_sends_and_reads_but_nothing_else(
    dsn: str, roles: Roles
) -> None:
    client = roles.create("client", dsn, "pgdurable_client")
    cdsn = as_user(dsn, client)
    app = pgdurable.App(cdsn)
    try:
        h = app.start("sec.order", ["o-1"], workflow_id="order-o-1", allow_unregistered=True)
        assert h.status() == "pending"
        app.emit_event("paid:o-1", {"cents": 500})
        app.send("order-o-1", {"note": "gift wrap"}, topic="notes")
        assert app.handle("order-o-1").run_id == h.run_id
        assert h.cancel() == "cancelled"
        assert h.status() == "cancelled"
    finally:
        app.close()
    assert query(cdsn, "select status from pgdurable.run_overview") == [("cancelled",)]
    assert query(cdsn, "select name from pgdurable.events") == [("paid:o-1",)]
    assert query(cdsn, "select count(*) from pgdurable.checkpoints") == [(0,)]
    for args in (("runs",), ("show", "order-o-1"), ("cancel", "order-o-1")):
        result = run_cli(*args, "--dsn", cdsn)
        assert result.exit_code == 0, result.output

    run = str(h.run_id)
    for statement, params in [
        ("select * from pgdurable.claim_runs('thief', array['default'], 10)", None),
        ("select pgdurable.claim_run(%s::uuid, 'thief')", (run,)),
        (
            "select pgdurable.record_checkpoint(%s::uuid, 1, 0, 'k', 'step', 'k', '1'::jsonb)",
            (run,),
        ),
        ("""select pgdurable.complete_run(%s::uuid, 1, '"forged"'::jsonb)""", (run,)),
        ("select pgdurable.gc_runs('0 seconds'::interval)", None),
        ("select pgdurable.shift_clock('1 day'::interval)", None),
        ("select pgdurable.resume_run(%s::uuid)", (run,)),
        ("""select pgdurable._end_run(%s::uuid, 1, 'completed', '"x"'::jsonb, null)""", (run,)),
        ("delete from pgdurable.events", None),
        ("update pgdurable.runs set status = 'pending'", None),
        ("delete from pgdurable.runs", None),
        (
            "insert into pgdurable.messages (run_id, payload, created_at) values (%s, '1', now())",
            (run,),
        ),
    ]:
        assert denied(cdsn, statement, params), f"a client may run: {statement}"


FORGE = (
    "insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input, "
    "output, available_at, created_at, updated_at, finished_at) values (gen_random_uuid(), "
    """'order-o-9', 'sec.ship', 'default', 'completed', '{"args": [], "kwargs": {}}', """
    """'"shipped (forged)"', now(), now(), now(), now())"""
)


def test_a_client_cannot_forge_a_run_result(dsn: str, roles: Roles) -> None:
    client = roles.create("client", dsn, "pgdurable_client")
    worker = roles.create("worker", dsn, "pgdurable_worker")
    assert denied(as_user(dsn, client), FORGE)

    capp = pgdurable.App(as_user(dsn, client))
    wapp = pgdurable.App(as_user(dsn, worker), lease=2.0)

    @wapp.workflow(name="sec.ship")
    def ship(order: str) -> str:
        return f"shipped {order}"

    try:
        handle = capp.start("sec.ship", ["o-9"], workflow_id="order-o-9", allow_unregistered=True)
        with running_worker(wapp):
            assert handle.result(timeout=30) == "shipped o-9"
    finally:
        capp.close()
        wapp.close()


def test_a_worker_runs_workflows_end_to_end_but_cannot_gc_or_shift_the_clock(
    dsn: str, roles: Roles
) -> None:
    client = roles.create("client", dsn, "pgdurable_client")
    worker = roles.create("worker", dsn, "pgdurable_worker")
    wdsn = as_user(dsn, worker)
    enable_clock_shift(dsn)
    query(dsn, "create table public.sec_orders (id text primary key, cents integer not null)")
    query(
        dsn,
        sql.SQL("grant insert, select on public.sec_orders to {}").format(sql.Identifier(worker)),
    )

    wapp = pgdurable.App(wdsn, lease=2.0)
    capp = pgdurable.App(as_user(dsn, client))

    @wapp.step()
    def price(order: str) -> int:
        return 100 * len(order)

    @wapp.transaction()
    def save(conn: psycopg.Connection[Any], order: str, cents: int) -> None:
        conn.execute("insert into public.sec_orders (id, cents) values (%s, %s)", (order, cents))

    @wapp.workflow(name="sec.label")
    def label(order: str) -> str:
        return f"label:{order}"

    @wapp.workflow(name="sec.order")
    def order_flow(order: str) -> dict[str, Any]:
        cents = price(order)
        save(order, cents)
        pgdurable.sleep(timedelta(hours=1))
        approval = pgdurable.wait_for_event(f"approved:{order}")
        note = pgdurable.recv("notes")
        return {"cents": cents, "approval": approval, "note": note, "label": label(order)}

    try:
        h = capp.start("sec.order", ["o-1"], workflow_id="order-o-1", allow_unregistered=True)
        with running_worker(wapp):
            wait_status(dsn, h.run_id, "sleeping")
            shift_clock(dsn, "2 hours")
            wait_status(dsn, h.run_id, "waiting")
            capp.emit_event("approved:o-1", "ann")
            wait_until(
                "the run to wait for its message",
                lambda: (
                    scalar(dsn, "select wait_for from pgdurable.runs where id = %s", (h.run_id,))
                    == "message:notes"
                ),
            )
            capp.send("order-o-1", "gift wrap", topic="notes")
            assert h.result(timeout=30) == {
                "cents": 300,
                "approval": "ann",
                "note": "gift wrap",
                "label": "label:o-1",
            }
    finally:
        wapp.close()
        capp.close()
    assert query(dsn, "select id, cents from public.sec_orders") == [("o-1", 300)]

    run = str(h.run_id)
    for statement, params in [
        ("select pgdurable.gc_runs('0 seconds'::interval)", None),
        ("select pgdurable.shift_clock('1 day'::interval)", None),
        ("select pgdurable.resume_run(%s::uuid)", (run,)),
        ("select pgdurable.fork_run(%s::uuid, 0)", (run,)),
        ("""select pgdurable._end_run(%s::uuid, 1, 'completed', '"x"'::jsonb, null)""", (run,)),
        ("""update pgdurable.runs set output = '"forged"' where id = %s""", (run,)),
        (FORGE, None),
    ]:
        assert denied(wdsn, statement, params), f"a worker may run: {statement}"


def test_an_admin_can_gc_shift_the_clock_and_resume(dsn: str, roles: Roles) -> None:
    admin = roles.create("admin", dsn, "pgdurable_admin")
    adsn = as_user(dsn, admin)
    enable_clock_shift(dsn)
    run = scalar(adsn, """select pgdurable.start_run('sec.later', '{}', '{"delay": 3600}')""")
    assert scalar(adsn, "select pgdurable.cancel_run(%s)", (run,)) == "cancelled"
    assert scalar(adsn, "select pgdurable.resume_run(%s)", (run,)) is True
    assert scalar(adsn, "select status from pgdurable.runs where id = %s", (run,)) == "pending"
    assert scalar(adsn, "select pgdurable.cancel_run(%s)", (run,)) == "cancelled"
    before = scalar(adsn, "select pgdurable.now()")
    after = scalar(adsn, "select pgdurable.shift_clock('2 days'::interval)")
    assert after - before >= timedelta(days=2)
    assert scalar(adsn, "select pgdurable.gc_runs('1 day'::interval)") == 1
    assert scalar(adsn, "select count(*) from pgdurable.runs") == 0
    assert denied(adsn, FORGE)
    assert denied(adsn, "select pgdurable._fence(gen_random_uuid(), 1)")


def test_roles_sql_without_the_right_to_create_roles_says_what_to_run(
    empty_db: str, roles: Roles, template_db: str
) -> None:
    """The file run by an owner who may not create roles: it prints the exact statements, an
    administrator runs them, the next init grants. (Role names are made unique for the test.)"""
    owner = roles.create("owner", empty_db)
    dbname = str(conninfo_to_dict(empty_db)["dbname"])
    query(
        empty_db,
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(dbname), sql.Identifier(owner)
        ),
    )
    odsn = as_user(empty_db, owner)
    with psycopg.connect(odsn, autocommit=True) as conn:
        init_schema(conn)

    tag = uuid.uuid4().hex[:8]
    names = {g: f"pgd_{tag}_{g.rpartition('_')[2]}" for g in GROUPS}
    text = (ROOT / "sql" / "roles.sql").read_text()
    for group, name in names.items():
        text = text.replace(group, name)
        roles.adopt(name, empty_db)

    notices: list[str] = []
    with psycopg.connect(odsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(text.encode())
    statements = [
        line.strip()
        for note in notices
        for line in note.splitlines()
        if re.match(r"\s*(create role|grant) ", line)
    ]
    assert sorted(statements) == sorted(f"create role {n} nologin;" for n in names.values())
    assert any("pgdurable init" in note for note in notices)

    for statement in statements:
        query(empty_db, statement.encode())
    with psycopg.connect(odsn, autocommit=True) as conn:
        conn.execute(text.encode())
        acl = (
            "select p.proname::text, p.proacl::text from pg_proc p "
            "where p.pronamespace = 'pgdurable'::regnamespace order by 1"
        )
        granted = conn.execute(acl).fetchall()
        conn.execute(text.encode())  # idempotent
        assert conn.execute(acl).fetchall() == granted
    client, worker = names["pgdurable_client"], names["pgdurable_worker"]
    assert scalar(
        empty_db,
        "select has_function_privilege(%s, 'pgdurable.start_run(text, jsonb, jsonb)', 'execute') "
        "and not has_function_privilege(%s, 'pgdurable.gc_runs'::regproc, 'execute') "
        "and has_table_privilege(%s, 'pgdurable.runs', 'select')",
        (client, worker, client),
    )


# --- 4. the clock-shift switch ------------------------------------------------------------------


def test_shift_clock_is_refused_unless_the_switch_is_on(empty_db: str) -> None:
    installed = run_cli("init", "--dsn", empty_db)
    assert installed.exit_code == 0, installed.output
    assert scalar(empty_db, "select allow_clock_shift from pgdurable.settings") is False

    with pytest.raises(psycopg.Error) as refused:
        query(empty_db, "select pgdurable.shift_clock('1 day'::interval)")
    assert refused.value.sqlstate == "PD008"
    diag = refused.value.diag
    assert "allow_clock_shift" in f"{diag.message_primary} {diag.message_hint}"
    assert scalar(empty_db, "select offset_interval from pgdurable.clock") == timedelta(0)

    query(empty_db, "update pgdurable.settings set allow_clock_shift = true")
    query(empty_db, "select pgdurable.shift_clock('1 day'::interval)")
    assert scalar(empty_db, "select offset_interval from pgdurable.clock") == timedelta(days=1)


# --- 5. pinned search_path, qualified statements ----------------------------------------------


def test_every_function_pins_its_search_path(conn: psycopg.Connection[Any]) -> None:
    functions = conn.execute(
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p "
        "where p.pronamespace = 'pgdurable'::regnamespace and p.prokind in ('f', 'p') order by 1"
    ).fetchall()
    assert functions
    assert [sig for sig, config in functions if SEARCH_PATH not in (config or [])] == []


# SQL syntax that looks like a call but resolves no function.
_SYNTAX = re.compile(
    r"all|and|any|array|as|between|by|case|cast|coalesce|conflict|distinct|else|except|exists"
    r"|filter|from|greatest|in|intersect|into|is|join|lateral|least|like|limit|not|nullif"
    r"|offset|on|or|over|partition|returning|row|select|set|then|union|using|values|when"
    r"|where|window|with"
)
_BARE_CALL = re.compile(r"(?<![\w.\"%])(\w+)\s*\(", re.IGNORECASE)


def test_the_statements_the_sdk_sends_qualify_every_function_they_call() -> None:
    bare: list[str] = []
    for name, text in Q.items():
        code = re.sub(r"--[^\n]*", "", str(text))
        code = re.sub(r"'[^']*'", "''", code)
        for match in _BARE_CALL.finditer(code):
            word = match.group(1).lower()
            preceding = code[: match.start()].rstrip().lower()
            if _SYNTAX.fullmatch(word) or preceding.endswith(" as"):
                continue
            bare.append(f"{name}: {match.group(1)}(")
    assert bare == [], f"unqualified calls resolve through the caller's search_path: {bare}"
    assert "pg_catalog.pg_advisory_xact_lock(" in str(Q["init_lock"])
