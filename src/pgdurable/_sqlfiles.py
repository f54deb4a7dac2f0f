"""Locates the SQL files: inside the wheel (pgdurable/sql/) or at the repository root."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def sql_dir() -> Path:
    for candidate in (_HERE / "sql", _HERE.parent.parent / "sql"):
        if (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError(
        f"pgdurable's SQL files are missing (looked in {_HERE / 'sql'} and "
        f"{_HERE.parent.parent / 'sql'}): reinstall the package"
    )


def read_sql(name: str) -> str:
    return (sql_dir() / name).read_text(encoding="utf-8")
