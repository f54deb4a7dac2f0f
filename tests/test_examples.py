"""Every examples/*.py runs as a subprocess and its output is asserted.

An example without an entry in EXAMPLES fails the suite: a new example must say what it prints.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgdurable
from conftest import PYTHON, ROOT
from pgdurable._embedded import stop

EXAMPLES_DIR = ROOT / "examples"

QUICKSTART_OUTPUT = [
    f"schema: version {pgdurable.SCHEMA_VERSION} ready",
    "started: workflow_id=order-o-test",
    "worker: stopped",
    "status: completed",
    'result: {"charge_id": "ch_o-test", "order_id": "o-test", '
    '"receipt": "receipt for o-test (ch_o-test)", "status": "shipped"}',
    "checkpoints:",
    "  0  step         charge        attempts=1",
    "  1  transaction  record_order  attempts=1",
    "  2  sleep        sleep         attempts=1",
    "  3  step         send_receipt  attempts=1",
    "orders rows for o-test: 1",
]

# file name -> (extra argv, the lines its output must contain, in order)
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "quickstart.py": (["--order-id", "o-test"], QUICKSTART_OUTPUT),
}


def _run(script: Path, argv: list[str], env: dict[str, str], timeout: float) -> list[str]:
    proc = subprocess.run(
        [PYTHON, str(script), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n"
        f"{proc.stderr}"
    )
    return proc.stdout.splitlines()


def _assert_in_order(lines: list[str], expected: list[str]) -> None:
    pos = 0
    for want in expected:
        try:
            pos = lines.index(want, pos) + 1
        except ValueError:
            shown = "\n".join(lines)
            pytest.fail(f"missing (or out of order) output line {want!r} in:\n{shown}")


def test_every_example_is_listed() -> None:
    # The pattern examples are asserted in test_pattern_examples.py (imported here, not at the
    # top, because it imports _run from this module).
    from test_pattern_examples import EXPECTED as PATTERN_EXAMPLES

    found = sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))
    assert found, "examples/ has no scripts"
    covered = sorted({*EXAMPLES, *PATTERN_EXAMPLES})
    assert covered == found, (
        "each examples/*.py needs its expected output in tests/test_examples.py EXAMPLES "
        "or tests/test_pattern_examples.py EXPECTED"
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example(name: str, dsn: str) -> None:
    """Runs against a fresh database that already has the schema (the test template)."""
    argv, expected = EXAMPLES[name]
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONUNBUFFERED="1")
    lines = _run(EXAMPLES_DIR / name, argv, env, timeout=90)
    assert lines[0] == "database: the database in $PGDURABLE_DSN"
    _assert_in_order(lines, expected)


def test_quickstart_with_dsn_argument(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGDURABLE_DSN"}
    lines = _run(EXAMPLES_DIR / "quickstart.py", ["--dsn", dsn, "--order-id", "o-test"], env, 90)
    assert lines[0] == "database: the database given with --dsn"
    _assert_in_order(lines, QUICKSTART_OUTPUT)
    # Starting the same order again returns the finished run: nothing runs twice.
    again = _run(EXAMPLES_DIR / "quickstart.py", ["--dsn", dsn, "--order-id", "o-test"], env, 90)
    _assert_in_order(again, QUICKSTART_OUTPUT)


@pytest.fixture
def embedded_home(tmp_path: Path) -> Iterator[Path]:
    """A PGDURABLE_HOME of its own; stops the embedded server the example leaves running."""
    yield tmp_path
    stop(tmp_path / "pgdata")  # a no-op when no server runs there


@pytest.mark.embedded
@pytest.mark.timeout(300)
def test_quickstart_on_the_embedded_database(embedded_home: Path) -> None:
    """No DSN at all: the example starts the embedded PostgreSQL (initdb on first use) and
    installs the schema there, as a newcomer's first run does."""
    env = {k: v for k, v in os.environ.items() if k != "PGDURABLE_DSN"}
    env.update(PGDURABLE_HOME=str(embedded_home), PYTHONUNBUFFERED="1")
    lines = _run(EXAMPLES_DIR / "quickstart.py", ["--order-id", "o-test"], env, timeout=240)
    assert lines[0] == f"database: the embedded PostgreSQL in {embedded_home}/pgdata"
    _assert_in_order(lines, QUICKSTART_OUTPUT)
    assert (embedded_home / "pgdata" / "PG_VERSION").exists()
