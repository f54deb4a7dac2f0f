"""The embedded development PostgreSQL (package ``pgserver``), used when no DSN is given."""

from __future__ import annotations

import os
import warnings
from pathlib import Path


def data_dir() -> Path:
    home = os.environ.get("PGDURABLE_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "pgdurable"
    return base / "pgdata"


def embedded_dsn() -> str:
    """Start (or join) the embedded server and return its DSN. It keeps running for other
    processes of this user; its data lives in $PGDURABLE_HOME/pgdata (default
    ~/.local/share/pgdurable/pgdata)."""
    try:
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir when imported (see below)
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver
    except ImportError as exc:
        raise RuntimeError(
            "no database given: pass App(dsn=...) or set PGDURABLE_DSN, or install the embedded "
            "development server with: pip install 'pgdurable[embedded]'"
        ) from exc
    path = data_dir()
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir, which warns on hosts without
        # XDG_RUNTIME_DIR (containers, CI); the fallback it then uses is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        server = pgserver.get_server(path, cleanup_mode=None)  # type: ignore[attr-defined]
    return str(server.get_uri())
