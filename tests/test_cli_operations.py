"""The CLI as the on-call person uses it: a run's timeline, the runs filters and pages, --json
for scripts, who did what (audit), progress on stderr, and bad input that changes nothing."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pgdurable
from apps.support import running_worker, scalar, shift_clock, wait_status
from pgdurable_cli import _progress
from pgdurable_cli._audit import os_user
from pgdurable_cli.main import cli


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)


def as_json(*args: str) -> Any:
    result = run_cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def start(dsn: str, workflow: str, *, queue: str | None = None, key: str | None = None) -> str:
    args = ["start", workflow, "--dsn", dsn]
    args += ["--queue", queue] if queue else []
    args += ["--workflow-id", key] if key else []
    return str(as_json(*args)["run_id"])


def audit_rows(dsn: str) -> int:
    return int(scalar(dsn, "select count(*) from pgdurable.audit_log"))


# --- show --timeline -----------------------------------------------------------------------------


def test_timeline_shows_each_operation_with_durations_attempts_and_gaps(dsn: str) -> None:
    app = pgdurable.App(dsn, lease=2.0)
    calls = {"flaky": 0}

    @app.step()
    def prepare() -> str:
        return "ready"

    @app.step(retry=pgdurable.Retry(max_attempts=3, initial_delay=0.05, backoff=1))
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first try fails")
        return "ok"

    @app.workflow(name="ops.timeline")
    def timeline_flow() -> str:
        prepare()
        flaky()
        pgdurable.sleep(timedelta(milliseconds=300))
        return "done"

    run_id = start(dsn, "ops.timeline", key="tl-1")
    with running_worker(app, poll_interval=0.05):
        assert app.handle(run_id).result(timeout=20) == "done"
    app.close()

    text = run_cli("show", "tl-1", "--timeline", "--dsn", dsn)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id} (tl-1) ops.timeline on default: completed;")
    header = lines[1].split()
    assert header[:4] == ["start", "took", "before", "it"]
    assert lines[3].startswith("+0 ms") and " queued " in lines[3]
    step_prepare = next(line for line in lines if "step prepare" in line)
    step_flaky = next(line for line in lines if "step flaky" in line)
    sleep_line = next(line for line in lines if re.search(r"\bsleep\b.*\bsleep\b", line))
    end_line = next(line for line in lines if "run completed" in line)
    # offsets and durations are people's units (ms, s)
    assert re.match(r"\+[0-9.]+ m?s\s+[0-9.]+ m?s\s+(gap [0-9.]+ m?s\s+)?step", step_prepare)
    assert re.search(r"\b2\s+done\b", step_flaky), "the retried step shows its 2 attempts"
    assert re.search(r"\b[0-9.]+ (ms|s)\b", sleep_line)
    assert "until" in sleep_line and "done" in sleep_line
    assert end_line.split()[0].startswith("+")

    timeline = as_json("show", run_id, "--timeline", "--dsn", dsn)
    assert timeline["run"]["status"] == "completed" and timeline["run"]["id"] == run_id
    ops = timeline["operations"]
    kinds = [op["kind"] for op in ops]
    assert kinds == ["queued", "step", "step", "sleep", "end-completed"]
    by_key = {op["key"]: op for op in ops if op["key"]}
    assert by_key["flaky"]["attempts"] == 2 and by_key["prepare"]["attempts"] == 1
    sleep = next(op for op in ops if op["kind"] == "sleep")
    assert sleep["seconds"] >= 0.3, "the sleep bar lasts until its wake-up"
    assert all(op["offset_seconds"] >= 0 and op["seconds"] >= 0 for op in ops)
    offsets = [op["offset_seconds"] for op in ops]
    assert offsets == sorted(offsets)
    assert set(ops[1]) >= {"label", "start", "end", "gap_before_seconds", "state", "run_attempt"}


def test_timeline_of_a_run_waiting_for_a_retry_shows_it_open(dsn: str) -> None:
    app = pgdurable.App(dsn, lease=2.0)

    @app.step(retry=pgdurable.Retry(max_attempts=5, initial_delay=3600, backoff=1))
    def charge() -> str:
        raise RuntimeError("card service down")

    @app.workflow(name="ops.retrying")
    def retrying() -> str:
        return charge()

    run_id = start(dsn, "ops.retrying")
    with running_worker(app, poll_interval=0.05):
        wait_status(dsn, run_id, "sleeping")
    app.close()
    ops = as_json("show", run_id, "--timeline", "--dsn", dsn)["operations"]
    retry = ops[-1]
    assert retry["kind"] == "retry" and retry["state"] == "failed"
    assert retry["attempts"] == 1 and "next at" in retry["detail"]
    text = run_cli("show", run_id, "--timeline", "--dsn", dsn).stdout
    assert "sleeping, still going on" in text.splitlines()[0]
    assert "retry of charge" in text


# --- runs filters, pages, --json -----------------------------------------------------------------


def test_each_runs_filter_narrows_the_list(dsn: str) -> None:
    old = start(dsn, "ops.bill", queue="billing", key="invoice-old")
    shift_clock(dsn, "3 hours")
    bill = start(dsn, "ops.bill", queue="billing", key="invoice-42")
    mail = start(dsn, "ops.mail", key="mail-ann")
    assert "cancelled" in run_cli("cancel", mail, "--dsn", dsn).stdout

    def ids(*filters: str) -> list[str]:
        return [r["id"] for r in as_json("runs", "--dsn", dsn, *filters)]

    assert ids() == [mail, bill, old]
    assert ids("--status", "cancelled") == [mail]
    assert ids("--workflow", "ops.bill") == [bill, old]
    assert ids("--queue", "billing") == [bill, old]
    assert ids("--since", "2h") == [mail, bill]
    assert ids("--until", "2h") == [old]
    assert ids("--search", "invoice") == [bill, old]
    assert ids("--search", bill) == [bill]
    assert ids("--workflow", "ops.bill", "--since", "1h") == [bill]
    created = as_json("runs", "--dsn", dsn, "--search", "invoice-42")[0]["created_at"]
    assert ids("--since", created) == [mail, bill]

    # keyset pages: --before the last row's cursor gives the next page, without overlap
    first = as_json("runs", "--dsn", dsn, "--limit", "2")
    assert [r["id"] for r in first] == [mail, bill]
    assert ids("--limit", "2", "--before", first[-1]["cursor"]) == [old]
    table = run_cli("runs", "--dsn", dsn, "--limit", "2")
    hint = re.search(r"--before '([^']+)'", table.stderr)
    assert hint and hint.group(1) == first[-1]["cursor"], table.stderr
    assert hint.group(0) not in table.stdout, "the paging hint stays off stdout"
    assert run_cli("runs", "--dsn", dsn, "--ids", "--queue", "billing").stdout.split() == [
        bill,
        old,
    ]


def test_json_of_every_listing_parses_and_has_its_fields(dsn: str) -> None:
    app = pgdurable.App(dsn, lease=2.0)

    @app.workflow(name="ops.listed", queue="listed")
    def listed() -> int:
        return 1

    run_id = start(dsn, "ops.listed", queue="listed")
    with running_worker(app, poll_interval=0.05):
        app.handle(run_id).result(timeout=15)
        workers = as_json("workers", "--dsn", dsn)
        workflows = as_json("workflows", "--dsn", dsn)
    app.close()
    waiting = start(dsn, "ops.listed", queue="listed")
    run_cli("schedules", "add", "nightly", "ops.listed", "--cron", "0 3 * * *", "--dsn", dsn)

    pending, run = as_json("runs", "--dsn", dsn)
    assert {"id", "workflow_id", "status", "queue_name", "created_at", "cursor"} <= set(run)
    assert (pending["id"], run["status"]) == (waiting, "completed")
    shown = as_json("show", run_id, "--dsn", dsn)
    assert shown["run"]["output"] == 1
    assert workers and "ops.listed" in workers[0]["workflows"] and "listed" in workers[0]["queues"]
    assert {"id", "last_seen_at", "running"} <= set(workers[0])
    (flow,) = [w for w in workflows if w["name"] == "ops.listed"]
    assert flow["queue_name"] == "listed" and flow["live_workers"] == 1
    (queue,) = [q for q in as_json("queues", "--dsn", dsn) if q["queue_name"] == "listed"]
    assert queue["pending"] == 1 and queue["paused"] is False
    assert [s["name"] for s in as_json("schedules", "--dsn", dsn)] == ["nightly"]
    entries = as_json("audit", "--dsn", dsn)
    assert {"at", "actor", "action", "run_id", "target", "detail"} <= set(entries[0])
    assert "ops.listed" in run_cli("workflows", "--dsn", dsn).stdout


# --- audit ---------------------------------------------------------------------------------------


def test_cli_actions_are_audited_with_their_actor_and_listed(dsn: str) -> None:
    run_id = start(dsn, "ops.audited", key="audited-1")
    env = {"PGDURABLE_ACTOR": "night-shift"}
    assert run_cli("pause", "audited-1", "--dsn", dsn, env=env).exit_code == 0
    assert run_cli("resume", "audited-1", "--dsn", dsn, "--actor", "ann").exit_code == 0
    assert run_cli("send", run_id, "--payload", '{"a": 1}', "--dsn", dsn).exit_code == 0
    assert run_cli("emit", "go", "--dsn", dsn, "--actor", "ann").exit_code == 0
    assert run_cli("queues", "pause", "billing", "--dsn", dsn, "--actor", "ann").exit_code == 0
    assert run_cli("cancel", run_id, "--dsn", dsn, "--actor", "bob").exit_code == 0

    entries = as_json("audit", "--dsn", dsn)
    got = [(e["actor"], e["action"], e["run_id"], e["target"]) for e in entries]
    me = f"cli:{os_user()}"
    assert got == [
        ("cli:bob", "cancel", run_id, None),
        ("cli:ann", "pause_queue", None, "billing"),
        ("cli:ann", "emit", None, "go"),
        (me, "send", run_id, None),
        ("cli:ann", "resume", run_id, None),
        ("cli:night-shift", "pause", run_id, None),
        (me, "start", run_id, "ops.audited"),
    ]
    assert entries[0]["detail"] == {"before": "pending", "outcome": "cancelled"}
    for_run = as_json("audit", "--run", "audited-1", "--dsn", dsn, "--limit", "2")
    assert [e["action"] for e in for_run] == ["cancel", "send"]
    table = run_cli("audit", "--run", run_id, "--dsn", dsn).stdout
    assert "cli:night-shift" in table and "pause" in table
    # the entries outlive the run: a collected run's id still finds them
    shift_clock(dsn, "1 day")
    assert run_cli("gc", "--older-than", "1h", "--dsn", dsn).exit_code == 0
    assert scalar(dsn, "select count(*) from pgdurable.runs where id = %s", (run_id,)) == 0
    assert len(as_json("audit", "--run", run_id, "--dsn", dsn)) == 5
    assert as_json("audit", "--dsn", dsn, "--limit", "1")[0]["action"] == "gc"


def test_a_failed_action_records_nothing(dsn: str) -> None:
    run_id = start(dsn, "ops.once")
    before = audit_rows(dsn)
    again = run_cli("resume", run_id, "--dsn", dsn)  # pending: not resumable
    assert again.exit_code == 1 and "can be resumed" in again.output
    assert audit_rows(dsn) == before


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--since", "yesterday"], "is not a time"),
        (["runs", "--until", "15 parsecs"], "is not a time"),
        (["runs", "--before", "page-2"], "is not a page cursor"),
        (["audit", "--since", "soon"], "is not a time"),
        (["emit", "go", "--payload", "{nope"], "--payload is not JSON"),
        (["send", "x", "--payload", "[1,"], "--payload is not JSON"),
        (["start", "wf", "--kwargs", "[]"], "--kwargs a JSON object"),
        (["cancel", "x", "--actor", "a" * 300], "at most 196 characters"),
    ],
)
def test_bad_input_is_a_usage_error_that_writes_nothing(
    dsn: str, args: list[str], message: str
) -> None:
    result = run_cli(*args, "--dsn", dsn)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert audit_rows(dsn) == 0
    assert scalar(dsn, "select count(*) from pgdurable.runs") == 0
    assert scalar(dsn, "select count(*) from pgdurable.events") == 0


@pytest.mark.parametrize(
    "args",
    [
        ["show", "nope", "--timeline"],
        ["retry", "nope"],
        ["send", "nope", "--payload", "1"],
        ["fork", "nope", "--from-step", "a"],
        ["audit", "--run", "nope"],
    ],
)
def test_an_unknown_run_exits_2_and_writes_nothing(dsn: str, args: list[str]) -> None:
    result = run_cli(*args, "--dsn", dsn)
    assert result.exit_code == 2, result.output
    assert "no run has id or workflow_id 'nope'" in result.output
    assert audit_rows(dsn) == 0


def test_several_runs_at_once_each_get_tried(dsn: str) -> None:
    first, second = start(dsn, "ops.many"), start(dsn, "ops.many")
    result = run_cli("cancel", first, "nope", second, "--dsn", dsn)
    assert result.exit_code == 1
    assert f"cancelled run {first}" in result.stdout and f"cancelled run {second}" in result.stdout
    assert "no run has id or workflow_id 'nope'" in result.stderr
    assert "1 of 3 runs could not be acted on" in result.stderr
    assert [e["action"] for e in as_json("audit", "--dsn", dsn)] == [
        "cancel",
        "cancel",
        "start",
        "start",
    ]


# --- progress ------------------------------------------------------------------------------------


def test_gc_progress_goes_to_stderr_not_stdout(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(5):
        run_cli("cancel", start(dsn, "ops.old"), "--dsn", dsn)
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    result = run_cli("gc", "--older-than", "0s", "--batch-size", "2", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 5 runs that finished more than 0s ago\n"
    progress = result.stderr.splitlines()
    assert progress[:3] == [
        "gc: 2 of ~5 runs deleted (40%)",
        "gc: 4 of ~5 runs deleted (80%)",
        "gc: 5 of ~5 runs deleted (100%)",
    ]
    gc_entries = [e for e in as_json("audit", "--dsn", dsn) if e["action"] == "gc"]
    assert [e["detail"]["deleted"] for e in gc_entries] == [1, 2, 2]


def test_drain_reports_on_stderr_and_the_outcome_on_stdout(dsn: str) -> None:
    result = run_cli("queues", "drain", f"q-{uuid.uuid4().hex[:6]}", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("drained (paused, nothing running)\n")
    assert "paused; 0 running" in result.stderr and "paused; 0" not in result.stdout
