"""The `pgdurable` command line against real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import pgdurable
from apps.support import running_worker
from conftest import PYTHON, with_db
from pgdurable_cli._support import load_app
from pgdurable_cli.main import cli

PGDURABLE = str(Path(sys.executable).parent / "pgdurable")
UNREACHABLE = "postgresql://bob:s3cret@127.0.0.1:1/nodb"


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def sql(dsn: str, statement: Any, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else None


def start(dsn: str, workflow: str, args: list[Any], **options: Any) -> str:
    rows = sql(
        dsn,
        "select pgdurable.start_run(%s, %s::jsonb, %s::jsonb)",
        (workflow, json.dumps({"args": args, "kwargs": {}}), json.dumps(options)),
    )
    return str(rows[0][0])


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A new database without the pgdurable schema."""
    name = f"pgdurable_e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_db(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


# --- init / check ------------------------------------------------------------------------------


def test_init_print_needs_no_database() -> None:
    result = run_cli("init", "--print", "--dsn", UNREACHABLE)
    assert result.exit_code == 0
    assert result.stdout == pgdurable.schema_sql()


def test_check_then_init_twice(empty_dsn: str) -> None:
    missing = run_cli("check", "--dsn", empty_dsn)
    assert missing.exit_code == 1
    assert "pgdurable init" in missing.output
    assert "Traceback" not in missing.output

    first = run_cli("init", "--dsn", empty_dsn)
    assert first.exit_code == 0, first.output
    assert f"installed schema version {pgdurable.SCHEMA_VERSION}" in first.output
    second = run_cli("init", "--dsn", empty_dsn)
    assert second.exit_code == 0
    assert (
        second.output.strip()
        == f"schema already at version {pgdurable.SCHEMA_VERSION}, nothing to do"
    )

    ok = run_cli("check", "--dsn", empty_dsn)
    assert ok.exit_code == 0
    assert f"schema version {pgdurable.SCHEMA_VERSION} is current" in ok.output


def test_check_reports_an_outdated_schema(dsn: str) -> None:
    sql(dsn, "insert into pgdurable.schema_version (version) values (99)")
    result = run_cli("check", "--dsn", dsn)
    assert result.exit_code == 1
    assert "version 99" in result.output and "upgrade the pgdurable package" in result.output


def test_init_without_create_privilege_says_what_to_grant(server_dsn: str, empty_dsn: str) -> None:
    role = f"pgdurable_r_{uuid.uuid4().hex[:12]}"
    sql(server_dsn, f'create role "{role}" login')
    try:
        result = run_cli("init", "--dsn", with_user(empty_dsn, role))
        assert result.exit_code == 1
        assert "may not create the pgdurable schema" in result.output
        assert "GRANT CREATE ON DATABASE" in result.output
        assert "Traceback" not in result.output
    finally:
        dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            # the role can be dropped once nothing it may connect to refers to it
            admin.execute(f'drop database if exists "{dbname}" with (force)')
            admin.execute(f'drop role "{role}"')


def with_user(dsn: str, user: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)


def test_unreachable_database_names_the_server_not_the_password() -> None:
    result = run_cli("runs", "--dsn", UNREACHABLE)
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at bob@127.0.0.1:1/nodb" in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


# --- runs / show / cancel / resume / retry -----------------------------------------------------


def fail_with_a_checkpoint(dsn: str, run_id: str) -> None:
    """Play a worker: claim the run, record one step, fail it with a traceback."""
    rows = sql(dsn, "select id, attempt from pgdurable.claim_runs('w1', '{orders}', 10, 30)")
    assert [str(r[0]) for r in rows] == [run_id]
    attempt = rows[0][1]
    sql(
        dsn,
        "select pgdurable.record_checkpoint(%s, %s, 1, 'charge', 'step', 'charge', %s::jsonb)",
        (run_id, attempt, json.dumps({"charged": 999})),
    )
    error = {
        "type": "ValueError",
        "message": "card declined",
        "traceback": "Traceback (most "
        'recent call last):\n  File "shop.py", line 3\nValueError: card declined\n',
    }
    sql(dsn, "select pgdurable.fail_run(%s, %s, %s::jsonb)", (run_id, attempt, json.dumps(error)))


def test_runs_show_cancel_resume_retry_round_trip(dsn: str) -> None:
    order = start(dsn, "process_order", ["o-1", 999], workflow_id="order-1", queue="orders")
    mail = start(dsn, "send_mail", ["ann"])
    fail_with_a_checkpoint(dsn, order)

    table = run_cli("runs", "--dsn", dsn)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:5] == ["id", "workflow_id", "workflow", "queue", "status"]
    assert mail in lines[2]  # newest first
    assert order in lines[3] and "failed" in lines[3] and "ValueError: card declined" in lines[3]

    listed = json.loads(run_cli("runs", "--dsn", dsn, "--json").output)
    assert [r["id"] for r in listed] == [mail, order]
    assert listed[1]["checkpoints"] == 1 and listed[1]["error_type"] == "ValueError"
    by_status = json.loads(run_cli("runs", "--dsn", dsn, "--json", "--status", "failed").output)
    assert [r["id"] for r in by_status] == [order]
    by_queue = json.loads(run_cli("runs", "--dsn", dsn, "--json", "--queue", "default").output)
    assert [r["id"] for r in by_queue] == [mail]
    by_name = json.loads(run_cli("runs", "--dsn", dsn, "--json", "--workflow", "nope").output)
    assert by_name == []
    assert run_cli("runs", "--dsn", dsn, "--workflow", "nope").output.strip() == "no runs match"
    assert len(json.loads(run_cli("runs", "--dsn", dsn, "--json", "--limit", "1").output)) == 1
    assert run_cli("runs", "--dsn", dsn, "--status", "bogus").exit_code == 2

    shown = run_cli("show", "order-1", "--dsn", dsn)
    assert shown.exit_code == 0, shown.output
    assert "run:" in shown.output and order in shown.output
    assert "error: ValueError: card declined" in shown.output
    assert 'File "shop.py", line 3' in shown.output
    assert "checkpoints (1):" in shown.output
    assert '{"charged": 999}' in shown.output
    as_json = json.loads(run_cli("show", order, "--dsn", dsn, "--json").output)
    assert as_json["run"]["status"] == "failed"
    assert as_json["run"]["error"]["type"] == "ValueError"
    assert as_json["checkpoints"][0]["step_key"] == "charge"
    assert as_json["checkpoints"][0]["output"] == {"charged": 999}

    resumed = run_cli("resume", "order-1", "--dsn", dsn)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed run" in resumed.output
    again = run_cli("resume", "order-1", "--dsn", dsn)
    assert again.exit_code == 1
    assert "only failed, cancelled or paused runs can be resumed" in again.output

    cancelled = run_cli("cancel", order, "--dsn", dsn)
    assert cancelled.exit_code == 0 and "cancelled run" in cancelled.output
    assert "nothing to cancel" in run_cli("cancel", order, "--dsn", dsn).output
    retried = run_cli("retry", "order-1", "--dsn", dsn)
    assert retried.exit_code == 0 and "retrying run" in retried.output
    state = json.loads(run_cli("show", "order-1", "--dsn", dsn, "--json").output)
    assert state["run"]["status"] == "pending"
    assert [c["step_key"] for c in state["checkpoints"]] == ["charge"]  # replayed, not redone


@pytest.mark.parametrize("command", ["show", "cancel", "resume", "retry"])
def test_unknown_run_exits_2(dsn: str, command: str) -> None:
    result = run_cli(command, "no-such-run", "--dsn", dsn)
    assert result.exit_code == 2
    assert "no run has id or workflow_id 'no-such-run'" in result.output
    assert "Traceback" not in result.output


def test_commands_on_a_database_without_the_schema_point_to_init(empty_dsn: str) -> None:
    result = run_cli("runs", "--dsn", empty_dsn)
    assert result.exit_code == 1
    assert "pgdurable init" in result.output


# --- gc ----------------------------------------------------------------------------------------


def test_gc_deletes_runs_finished_long_enough_ago(dsn: str) -> None:
    old = start(dsn, "wf", [])
    start(dsn, "wf", [])  # still pending: never collected
    assert "cancelled" in run_cli("cancel", old, "--dsn", dsn).output
    sql(dsn, "select pgdurable.shift_clock('8 days')")
    recent = start(dsn, "wf", [])
    run_cli("cancel", recent, "--dsn", dsn)

    result = run_cli("gc", "--older-than", "7d", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted 1 run that finished more than 7d ago"
    remaining = {r["id"] for r in json.loads(run_cli("runs", "--dsn", dsn, "--json").output)}
    assert old not in remaining and recent in remaining and len(remaining) == 2
    assert "deleted 0 runs" in run_cli("gc", "--older-than", "1d12h", "--dsn", dsn).output


def test_gc_deletes_in_batches(dsn: str) -> None:
    ids = [start(dsn, "wf", []) for _ in range(5)]
    for run_id in ids:
        sql(dsn, "select pgdurable.cancel_run(%s)", (run_id,))
    result = run_cli("gc", "--older-than", "0s", "--batch-size", "2", "--dsn", dsn)
    assert result.output.strip() == "deleted 5 runs that finished more than 0s ago"


@pytest.mark.parametrize("bad", ["7x", "7", "d", "-1d", "1.5h", "7 d"])
def test_gc_rejects_a_bad_duration(bad: str) -> None:
    result = run_cli("gc", "--older-than", bad, "--dsn", UNREACHABLE)
    assert result.exit_code == 2
    assert "is not a duration" in result.output


# --- worker ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_app", "is not MODULE:ATTR"),
        ("no_such_module_for_pgdurable:app", "cannot import module 'no_such_module_for_pgdurable'"),
        ("cli_app:missing", "module 'cli_app' has no attribute 'missing': it has app"),
        ("cli_app:not_an_app", "cli_app:not_an_app is a int, not a pgdurable.App"),
    ],
)
def test_worker_rejects_a_bad_app(spec: str, message: str) -> None:
    result = run_cli("worker", spec, "--dsn", UNREACHABLE)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_app_may_be_a_factory() -> None:
    import cli_app

    assert load_app("cli_app:make_app") is cli_app.app


def test_worker_on_a_database_without_the_schema(empty_dsn: str) -> None:
    result = run_cli("worker", "cli_app:make_app", "--dsn", empty_dsn)
    assert result.exit_code == 1
    assert "pgdurable init" in result.output


@pytest.mark.slow
def test_worker_runs_a_run_started_in_sql_and_stops_on_sigterm(
    dsn: str, run_subprocess_env: dict[str, str]
) -> None:
    run_id = start(dsn, "cli_greet", ["ann"])
    env = dict(run_subprocess_env, PGDURABLE_DSN="postgresql://postgres@127.0.0.1:1/not_this")
    proc = subprocess.Popen(
        [
            PGDURABLE,
            "worker",
            "cli_app:app",
            "--dsn",
            dsn,
            "--concurrency",
            "2",
            "--poll-interval",
            "0.2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = output = None
        while time.monotonic() < deadline and proc.poll() is None:
            status, output = sql(
                dsn, "select status, output from pgdurable.runs where id = %s", (run_id,)
            )[0]
            if status == "completed":
                break
            time.sleep(0.1)
        if status == "completed":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert status == "completed", f"run is {status}; the worker said:\n{err}"
    assert output == "hello ANN"
    assert proc.returncode == 0, err
    assert "queues default" in err and "workflows cli_greet" in err
    assert "stopped" in err


@pytest.mark.slow
def test_the_sdk_does_not_import_click() -> None:
    code = "import sys, pgdurable; sys.exit('click' in sys.modules)"
    assert subprocess.run([PYTHON, "-c", code], timeout=60).returncode == 0


@pytest.mark.slow
def test_entry_point_prints_the_version() -> None:
    done = subprocess.run([PGDURABLE, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert pgdurable.__version__ in done.stdout
    assert os.path.basename(PGDURABLE) in done.stdout


def test_start_emit_send_and_fork_from_the_command_line(dsn: str) -> None:
    app = pgdurable.App(dsn, lease=2.0)

    @app.step()
    def charge(cents: int) -> str:
        return f"charged {cents}"

    @app.workflow(name="cli.order")
    def order(cents: int) -> dict[str, Any]:
        paid = charge(cents)
        approval = pgdurable.wait_for_event(f"approve:{cents}")
        note = pgdurable.recv("note")
        return {"paid": paid, "approval": approval, "note": note}

    start = ["start", "cli.order", "--args", "[700]", "--workflow-id", "o-700", "--dsn", dsn]
    started = run_cli(*start)
    assert started.exit_code == 0 and "workflow_id o-700" in started.stdout
    run_id = json.loads(run_cli(*start, "--json").stdout)["run_id"]
    assert run_id in started.stdout, "a second start with the workflow id returns the same run"
    assert run_cli("emit", "approve:700", "--payload", '{"by": "ann"}', "--dsn", dsn).exit_code == 0
    sent = run_cli("send", "o-700", "--topic", "note", "--payload", '"gift wrap"', "--dsn", dsn)
    assert sent.exit_code == 0 and "topic note" in sent.stdout
    with running_worker(app, poll_interval=0.05):
        assert app.handle("o-700").result(timeout=15) == {
            "paid": "charged 700",
            "approval": {"by": "ann"},
            "note": "gift wrap",
        }
        forked = run_cli("fork", "o-700", "--from-step", "approve:700", "--json", "--dsn", dsn)
        assert forked.exit_code == 0, forked.output
        new = app.handle(json.loads(forked.stdout)["run_id"])
        run_cli("send", str(new.run_id), "--topic", "note", "--payload", '"no wrap"', "--dsn", dsn)
        # the fork replays the charge and re-executes from the event wait on
        assert new.result(timeout=15) == {
            "paid": "charged 700",
            "approval": {"by": "ann"},
            "note": "no wrap",
        }
    app.close()
    bad = CliRunner().invoke(cli, ["start", "cli.order", "--args", "[1", "--dsn", dsn])
    assert bad.exit_code == 2 and "--args is not JSON" in bad.output
    missing = CliRunner().invoke(cli, ["fork", "o-700", "--from-step", "nope", "--dsn", dsn])
    assert missing.exit_code == 2 and "has no step 'nope'" in missing.output
