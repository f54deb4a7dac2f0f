"""Hardening of the `pgdurable` command line (issue 7), against real databases.

`worker MODULE:ATTR` never runs a workflow, step or transaction named by mistake; a worker
without a database says loudly it uses the embedded development one; worker logs come as text
or JSON lines with their extra fields; stored strings never reach the terminal as control
characters; DSN passwords are never printed; out-of-range numbers are usage errors; and gc
can be previewed (--dry-run) and asks before deleting on a terminal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pgdurable
from apps.support import query, scalar, wait_until
from conftest import ROOT
from pgdurable_cli._logging import JsonFormatter, TextFormatter
from pgdurable_cli._output import safe
from pgdurable_cli._support import embedded_warning, hide_password
from pgdurable_cli.main import cli

PGDURABLE = str(Path(sys.executable).parent / "pgdurable")
UNREACHABLE = "postgresql://bob:s3cret@127.0.0.1:1/nodb"
# What a terminal would obey: C0 but newline, DEL, C1 (tabs are not printed either).
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`pgdurable worker` configures the root logger of the process it runs in: undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def start(dsn: str, workflow: str, args: list[Any], **options: Any) -> str:
    return str(
        scalar(
            dsn,
            "select pgdurable.start_run(%s, %s::jsonb, %s::jsonb)",
            (workflow, json.dumps({"args": args, "kwargs": {}}), json.dumps(options)),
        )
    )


def count_runs(dsn: str) -> int:
    return int(scalar(dsn, "select count(*) from pgdurable.runs"))


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory importable by in-process CLI calls, for app modules written by the tests."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PGDURABLE_DSN", raising=False)
    return tmp_path


def write_module(directory: Path, source: str) -> str:
    """Write an app module under a unique name (imports are cached per name) and return it."""
    name = f"hardening_app_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return name


def subprocess_env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --- 1. worker MODULE:ATTR never runs what it names by mistake ---------------------------------

TYPO_APP = """
    import pathlib

    import pgdurable

    MARK = pathlib.Path(__file__).with_name("body_ran")
    app = pgdurable.App({dsn!r})
    admin = pgdurable.App({dsn!r})


    @app.workflow(name="nightly")
    def nightly() -> str:
        MARK.write_text("workflow")
        return "done"


    @app.step()
    def tidy() -> None:
        MARK.write_text("step")


    @app.transaction()
    def record(conn) -> None:
        MARK.write_text("transaction")


    nightly_on_x = nightly.options(queue="x")


    def needs_args(name):
        MARK.write_text("function with arguments")
        return app


    class Factory:
        def __call__(self):
            MARK.write_text("callable instance")
            return app


    factory = Factory()
    App = pgdurable.App
"""


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("nightly", "is a pgdurable workflow ('nightly'), not a pgdurable.App"),
        ("tidy", "is a pgdurable step"),
        ("record", "is a pgdurable transaction"),
        ("nightly_on_x", "is a pgdurable workflow with options"),
        ("App", "is the class pgdurable.App, not a pgdurable.App"),
        ("needs_args", "takes arguments, so it is not an App factory"),
        ("factory", "is a Factory, not a pgdurable.App"),
    ],
)
def test_worker_naming_a_workflow_or_step_fails_before_anything_runs(
    dsn: str, app_dir: Path, attr: str, message: str
) -> None:
    module = write_module(app_dir, TYPO_APP.format(dsn=dsn))
    result = run_cli("worker", f"{module}:{attr}", "--dsn", dsn)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert f"has the Apps admin, app: `pgdurable worker {module}:admin`" in result.output
    assert "Traceback" not in result.output
    assert not (app_dir / "body_ran").exists(), (app_dir / "body_ran").read_text()
    assert count_runs(dsn) == 0


def test_a_module_without_an_app_says_so(app_dir: Path) -> None:
    module = write_module(app_dir, "import pgdurable\n\nnumber = 7\n")
    result = run_cli("worker", f"{module}:number", "--dsn", UNREACHABLE)
    assert result.exit_code == 2
    assert f"Module '{module}' has no pgdurable.App at module level" in result.output


def test_a_factory_function_still_gives_the_app(app_dir: Path) -> None:
    module = write_module(
        app_dir,
        """
        import pgdurable

        def make_app():
            return pgdurable.App("postgresql://nobody@127.0.0.1:1/none")
        """,
    )
    result = run_cli("worker", f"{module}:make_app", "--dsn", UNREACHABLE)
    # The factory was called and its App used: the worker got as far as connecting.
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at bob@127.0.0.1:1/nodb" in result.output


# --- 2. no DSN: a loud warning about the embedded development database -------------------------


def test_embedded_warning_only_without_any_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGDURABLE_HOME", str(tmp_path))
    monkeypatch.delenv("PGDURABLE_DSN", raising=False)
    warning = embedded_warning(pgdurable.App())
    assert warning is not None
    assert str(tmp_path / "pgdata") in warning
    assert "embedded DEVELOPMENT database" in warning
    assert "must pass --dsn or set PGDURABLE_DSN" in warning
    assert embedded_warning(pgdurable.App("postgresql://a@db/x")) is None
    monkeypatch.setenv("PGDURABLE_DSN", "postgresql://a@db/x")
    assert embedded_warning(pgdurable.App()) is None


def test_worker_with_a_dsn_does_not_warn(app_dir: Path) -> None:
    module = write_module(app_dir, "import pgdurable\n\napp = pgdurable.App()\n")
    result = CliRunner().invoke(cli, ["worker", f"{module}:app", "--dsn", UNREACHABLE])
    assert result.exit_code == 1
    assert "embedded" not in result.output


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A PGDURABLE_HOME for the embedded server; the server started in it is stopped after."""
    home = Path(tempfile.mkdtemp(prefix="pgdurable-home-"))
    home.chmod(0o755)  # the embedded server runs postgres as its own user as root
    yield home
    pid_file = home / "pgdata" / "postmaster.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown
        wait_until("the embedded server to stop", lambda: not pid_file.exists(), timeout=30)
    shutil.rmtree(home)


@pytest.mark.slow
def test_worker_without_a_dsn_warns_loudly_on_stderr(
    app_dir: Path, embedded_home: Path, tmp_path: Path
) -> None:
    module = write_module(
        app_dir,
        """
        import pgdurable

        app = pgdurable.App()

        @app.workflow()
        def noop() -> None:
            return None
        """,
    )
    err_path = tmp_path / "stderr.txt"
    env = subprocess_env(PGDURABLE_DSN=None, PGDURABLE_HOME=str(embedded_home))
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [PGDURABLE, "worker", f"{module}:app", "--poll-interval", "0.2"],
            cwd=app_dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_until(
                "the worker to start on the embedded server",
                lambda: ": queues " in err_path.read_text() or proc.poll() is not None,
                timeout=90,
                every=0.1,
            )
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err_path.read_text()
    assert proc.returncode == 0, text
    warning = next(line for line in text.splitlines() if "WARNING" in line)
    assert f"embedded DEVELOPMENT database in {embedded_home / 'pgdata'}" in warning
    assert "Production workers must pass --dsn or set PGDURABLE_DSN" in warning
    assert text.index("WARNING") < text.index(": queues ")  # said before the worker starts


# --- 3. log formats ----------------------------------------------------------------------------

RUN_EXTRAS: dict[str, Any] = {
    "run_id": uuid.UUID("0b8a3c2e-4f6d-4e0f-9a55-2f4c6d8e1a7b"),
    "workflow": "process order",
    "step": "charge",
    "attempt": 2,
    "delay": 1.5,
    "worker_id": "host:1:abc",
    "queue": "orders",
    "outcome": "retry",
    "error": {"type": "ValueError", "message": "card\x1b[2J declined\x9b"},
}


def emit(
    formatter: logging.Formatter, message: str, *args: Any, exc: bool = False, **extra: Any
) -> str:
    """Log one record through a real logger and return what the formatter wrote."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"pgdurable.test_{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        raise ValueError("declined")
    except ValueError:
        logger.warning(message, *args, extra=extra, exc_info=exc)
    return stream.getvalue()


def test_json_log_lines_carry_every_extra_field() -> None:
    out = emit(JsonFormatter(), "run %s: step %s failed", "r-1", "charge", **RUN_EXTRAS)
    assert out.count("\n") == 1
    entry = json.loads(out)
    assert entry["level"] == "WARNING"
    assert entry["logger"].startswith("pgdurable.test_")
    assert entry["message"] == "run r-1: step charge failed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    assert entry["run_id"] == str(RUN_EXTRAS["run_id"])
    for key in ("workflow", "step", "attempt", "delay", "worker_id", "queue", "outcome", "error"):
        assert entry[key] == RUN_EXTRAS[key], key
    assert not RAW_CONTROL.search(out)
    assert "\\u009b" in out


def test_json_log_lines_keep_the_traceback_and_survive_odd_values() -> None:
    odd = object()
    out = emit(JsonFormatter(), "boom", exc=True, thing=odd, time="forged")
    entry = json.loads(out)
    assert "ValueError: declined" in entry["exception"]
    assert entry["thing"] == str(odd)
    assert entry["time"] != "forged"  # an extra cannot replace the record's own fields


def test_text_log_lines_append_extras_as_key_value() -> None:
    out = emit(TextFormatter(), "run %s retrying", "r-\x1b]0;x\x07", exc=True, **RUN_EXTRAS)
    first, *rest = out.splitlines()
    assert " WARNING pgdurable.test_" in first
    assert "run r-\\x1b]0;x\\x07 retrying" in first
    assert f"run_id={RUN_EXTRAS['run_id']}" in first
    assert 'workflow="process order"' in first and "step=charge" in first
    assert "attempt=2" in first and "delay=1.5" in first and "outcome=retry" in first
    assert '"card\\u001b[2J declined\\x9b"' in first
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: declined"
    assert not RAW_CONTROL.search(out)


def test_worker_rejects_an_unknown_log_format() -> None:
    result = run_cli("worker", "cli_app:app", "--log-format", "xml", "--dsn", UNREACHABLE)
    assert result.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in result.output


@pytest.mark.slow
def test_worker_logs_json_lines(dsn: str, app_dir: Path) -> None:
    module = write_module(
        app_dir,
        """
        import pgdurable

        app = pgdurable.App()

        @app.workflow(name="hard_echo")
        def echo(x):
            return x
        """,
    )
    run_id = start(dsn, "hard_echo", ["hi"])
    proc = subprocess.Popen(
        [PGDURABLE, "worker", f"{module}:app", "--dsn", dsn, "--log-format", "json"],
        cwd=app_dir,
        env=subprocess_env(PGDURABLE_DSN=None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            "the run to complete",
            lambda: (
                scalar(dsn, "select status from pgdurable.runs where id = %s", (run_id,))
                == "completed"
                or proc.poll() is not None
            ),
            timeout=60,
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]
    started = [e for e in entries if e["message"].startswith("worker ")]
    assert started and started[0]["logger"] == "pgdurable.worker", err
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)


# --- 4. terminal safety ------------------------------------------------------------------------

EVIL_ID = "x\x1b[2J\x1b]0;pwned\x07\x9b31m\x7f"
EVIL_ERROR = {
    "type": "Boom\x1b[5m",
    "message": "bad \x1b]0;pwned\x07 news\x9b",
    "traceback": (
        'Traceback (most recent call last):\n  File "x.py"\x1b[2J\nBoom: \x1b]0;t\x07\rfake\n'
    ),
}


def assert_terminal_safe(result: Result) -> None:
    assert result.exit_code == 0, result.output
    found = RAW_CONTROL.search(result.output)
    assert found is None, f"raw {found.group()!r} in output:\n{result.output!r}"


@pytest.fixture
def evil_runs(dsn: str) -> tuple[str, str]:
    """A pending run whose id, names and input hold escape sequences, and a failed run whose
    error and traceback do."""
    pending = start(dsn, "wf", ["\x1b[5mblink\x9b"], workflow_id=EVIL_ID)
    # start_run accepts only plain workflow and queue names today; a database written by an
    # older version (or by hand) may still hold anything.
    query(
        dsn,
        "update pgdurable.runs set workflow_name = %s, queue_name = %s where id = %s",
        ("evil\x1b[31mflow", "q\x1b[1m", pending),
    )
    failed = start(dsn, "wf", [], workflow_id="failed-\x1b[2J")
    query(
        dsn,
        "update pgdurable.runs set status = 'failed', finished_at = now(), error = %s::jsonb,"
        " note = %s where id = %s",
        (json.dumps(EVIL_ERROR), "note\x1b[8m", failed),
    )
    return pending, failed


def test_tables_and_show_escape_control_characters(dsn: str, evil_runs: tuple[str, str]) -> None:
    pending, failed = evil_runs
    table = run_cli("runs", "--dsn", dsn)
    assert_terminal_safe(table)
    assert "x\\x1b[2J\\x1b]0;pwned" in table.output
    assert "Boom\\x1b[5m: bad \\x1b]0;pwned\\x07 news\\x9b" in table.output

    shown = run_cli("show", EVIL_ID, "--dsn", dsn)
    assert_terminal_safe(shown)
    assert pending in shown.output
    assert "x\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\x7f" in shown.output
    assert "evil\\x1b[31mflow" in shown.output and "q\\x1b[1m" in shown.output
    assert "\\u001b[5mblink\\u009b" in shown.output  # the input, as JSON

    failure = run_cli("show", failed, "--dsn", dsn)
    assert_terminal_safe(failure)
    assert "error: Boom\\x1b[5m: bad \\x1b]0;pwned\\x07 news\\x9b" in failure.output
    assert 'File "x.py"\\x1b[2J\nBoom: \\x1b]0;t\\x07\\rfake' in failure.output
    assert "note\\x1b[8m" in failure.output

    cancelled = run_cli("cancel", EVIL_ID, "--dsn", dsn)
    assert_terminal_safe(cancelled)
    assert f"cancelled run {pending} (x\\x1b[2J" in cancelled.output
    resumed = run_cli("resume", failed, "--dsn", dsn)
    assert_terminal_safe(resumed)
    assert "(failed-\\x1b[2J)" in resumed.output


def test_json_output_escapes_control_characters(dsn: str, evil_runs: tuple[str, str]) -> None:
    pending, failed = evil_runs
    listed = run_cli("runs", "--json", "--dsn", dsn)
    assert_terminal_safe(listed)
    by_id = {r["id"]: r for r in json.loads(listed.output)}
    assert by_id[pending]["workflow_id"] == EVIL_ID  # escaped in the text, exact once parsed
    assert by_id[failed]["error_message"] == EVIL_ERROR["message"]

    shown = run_cli("show", failed, "--json", "--dsn", dsn)
    assert_terminal_safe(shown)
    assert json.loads(shown.output)["run"]["error"] == EVIL_ERROR


def test_errors_naming_a_stored_string_escape_it(dsn: str, evil_runs: tuple[str, str]) -> None:
    result = run_cli("retry", EVIL_ID, "--dsn", dsn)  # a pending run cannot be retried
    assert result.exit_code == 1
    assert not RAW_CONTROL.search(result.output)
    missing = run_cli("show", "nope\x1b[2J", "--dsn", dsn)
    assert missing.exit_code == 2
    assert "'nope\\x1b[2J'" in missing.output and not RAW_CONTROL.search(missing.output)


def test_safe_keeps_lines_only_when_asked() -> None:
    assert safe("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"
    assert safe("a\nb\tc\x1b\x85", multiline=True) == "a\nb\tc\\x1b\\x85"


# --- 5. DSN passwords are never printed --------------------------------------------------------

BAD_DSNS = [
    "postgresql://u:pwLEAK42@[::1:5432/x",  # psycopg quotes the whole URI in its error
    "postgresql://u:pwLEAK42@127.0.0.1:1/x?foo=bar",
    "postgresql://u:pwLEAK42@127.0.0.1:99999/x",
    "postgresql://u:pw@LEAK42@127.0.0.1:1/x",
    "user=u password=pwLEAK42 host=127.0.0.1 port=1 dbname",
    "user=u password='pw LEAK42' host=127.0.0.1 port=1",
    "postgresql://u:pwLEAK42@127.0.0.1:1/x",
]
COMMANDS = [
    ["init"],
    ["check"],
    ["runs"],
    ["show", "some-run"],
    ["gc", "--older-than", "1d", "--yes"],
    ["worker", "{module}:app"],
]


@pytest.mark.parametrize("bad_dsn", BAD_DSNS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_command_prints_a_dsn_password(app_dir: Path, command: list[str], bad_dsn: str) -> None:
    module = write_module(app_dir, "import pgdurable\n\napp = pgdurable.App()\n")
    args = [a.format(module=module) for a in command]
    result = CliRunner().invoke(cli, [*args, "--dsn", bad_dsn])
    assert result.exit_code in (1, 2), result.output
    assert "LEAK42" not in result.stdout and "LEAK42" not in result.stderr, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback


@pytest.mark.slow
def test_a_malformed_dsn_in_the_environment_is_not_echoed() -> None:
    env = subprocess_env(PGDURABLE_DSN="postgresql://u:pwLEAK42@[::1:5432/x")
    done = subprocess.run([PGDURABLE, "runs"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid DSN" in done.stderr and "***" in done.stderr
    assert "LEAK42" not in done.stdout + done.stderr


def test_hide_password_masks_uris_pairs_and_the_password_itself() -> None:
    dsn = "host=db password=hunter22 user=u"
    assert hide_password(f"bad: {dsn}", dsn) == "bad: host=db password=*** user=u"
    # A DSN that parses is never quoted whole, so its password is not hunted in every word...
    assert hide_password("role hunter22", dsn) == "role hunter22"
    # ...one that does not parse may be, in pieces.
    broken = f"{dsn} 'oops"
    assert hide_password('after "hunter22" in', broken) == 'after "***" in'
    uri = "postgresql://u:p%40ss@db/x"
    assert hide_password(f'in "{uri}"', uri) == 'in "postgresql://u:***@db/x"'
    at = "postgresql://u:pass@word@db/x"  # libpq: password "pass", host "word@db"
    assert hide_password("failed to resolve host 'word@db'", at) == (
        "failed to resolve host '***@db'"
    )


# --- 6. out-of-range numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gc", "--older-than", "99999999999999d"], "maximum duration, 36500d (100 years)"),
        (["gc", "--older-than", "36501d"], "maximum duration, 36500d (100 years)"),
        (["gc", "--older-than", "1" * 5000 + "s"], "maximum duration"),
        (["gc", "--older-than", "1d", "--batch-size", "99999999999999999999"], "--batch-size"),
        (["runs", "--limit", "99999999999999999999"], "--limit"),
        (["runs", "--limit", "1000001"], "1<=x<=1000000"),
        (["worker", "cli_app:app", "--concurrency", "99999999999999999999"], "--concurrency"),
        (["worker", "cli_app:app", "--concurrency", "1001"], "1<=x<=1000"),
        (["worker", "cli_app:app", "--poll-interval", "inf"], "--poll-interval"),
        (["worker", "cli_app:app", "--poll-interval", "nan"], "not a finite number of seconds"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*args, "--dsn", UNREACHABLE])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_the_longest_duration_is_accepted(dsn: str) -> None:
    result = run_cli("gc", "--older-than", "36500d", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted 0 runs that finished more than 36500d ago"


# --- 7. gc: dry run, confirmation, parents ----------------------------------------------------


def cancelled_runs(dsn: str, count: int) -> list[str]:
    ids = [start(dsn, "wf", []) for _ in range(count)]
    for run_id in ids:
        query(dsn, "select pgdurable.cancel_run(%s)", (run_id,))
    return ids


def test_gc_dry_run_counts_and_deletes_nothing(dsn: str) -> None:
    cancelled_runs(dsn, 3)
    start(dsn, "wf", [])  # pending: never collected
    result = run_cli("gc", "--older-than", "0s", "--dry-run", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "would delete 3 runs that finished more than 0s ago"
    assert count_runs(dsn) == 4


def test_gc_without_a_terminal_does_not_ask(dsn: str) -> None:
    cancelled_runs(dsn, 2)
    result = run_cli("gc", "--older-than", "0s", "--dsn", dsn)
    assert result.output.strip() == "deleted 2 runs that finished more than 0s ago"


def test_gc_keeps_children_of_an_unfinished_parent(dsn: str) -> None:
    parent = start(dsn, "wf", [])
    child = start(dsn, "wf", [], parent_id=parent)
    query(dsn, "select pgdurable.cancel_run(%s)", (child,))
    kept = run_cli("gc", "--older-than", "0s", "--yes", "--dsn", dsn)
    assert kept.output.strip() == "deleted 0 runs that finished more than 0s ago"
    assert scalar(dsn, "select status from pgdurable.runs where id = %s", (child,)) == "cancelled"
    query(dsn, "select pgdurable.cancel_run(%s)", (parent,))
    both = run_cli("gc", "--older-than", "0s", "--yes", "--dsn", dsn)
    assert both.output.strip() == "deleted 2 runs that finished more than 0s ago"


def gc_on_a_terminal(dsn: str, answer: str, *extra: str) -> tuple[int, str]:
    """Run `pgdurable gc` with a terminal as stdin, type ``answer``; (exit code, stdout)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [PGDURABLE, "gc", "--older-than", "0s", "--dsn", dsn, *extra],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_env(PGDURABLE_DSN=None),
            text=True,
        )
        os.close(slave)
        slave = -1
        os.write(master, answer.encode())
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return proc.returncode, out


@pytest.mark.slow
def test_gc_on_a_terminal_asks_with_the_count(dsn: str) -> None:
    cancelled_runs(dsn, 2)
    code, out = gc_on_a_terminal(dsn, "n\n")
    assert code == 1, out
    assert "delete 2 runs that finished more than 0s ago, with their history? [y/N]" in out
    assert "Aborted" in out
    assert count_runs(dsn) == 2

    code, out = gc_on_a_terminal(dsn, "y\n")
    assert code == 0, out
    assert out.rstrip().endswith("deleted 2 runs that finished more than 0s ago")
    assert count_runs(dsn) == 0


@pytest.mark.slow
def test_gc_yes_skips_the_question_on_a_terminal(dsn: str) -> None:
    cancelled_runs(dsn, 1)
    code, out = gc_on_a_terminal(dsn, "", "--yes")
    assert code == 0, out
    assert out.strip() == "deleted 1 run that finished more than 0s ago"
