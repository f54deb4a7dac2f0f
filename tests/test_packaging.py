"""The wheel a user installs carries the SQL files, the CLI package and the typing marker."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT


@pytest.mark.slow
def test_wheel_ships_sql_cli_and_py_typed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("pgdurable-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "pgdurable/__init__.py",
        "pgdurable/py.typed",
        "pgdurable/sql/schema.sql",
        "pgdurable/sql/queries.sql",
        "pgdurable/sql/roles.sql",
        "pgdurable/testing/__init__.py",
        "pgdurable/sql/migrations/0001_initial.sql",
        "pgdurable/sql/migrations/0002_hardening.sql",
        "pgdurable_cli/__init__.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert any(n.startswith("pgdurable_cli/") and n.endswith(".py") for n in names)
    shipped = zipfile.ZipFile(wheel).read("pgdurable/sql/schema.sql").decode()
    assert "create or replace function pgdurable.claim_runs(" in shipped
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "pgdurable = pgdurable_cli.main:cli" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
    assert "pgdurable = pgdurable.testing" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
