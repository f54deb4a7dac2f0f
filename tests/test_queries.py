"""Every named statement of sql/queries.sql is used by the SDK or the CLI, and every name they
use is defined: a renamed or deleted query fails here, not in production."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT
from pgdurable._queries import Q, parse

# Q["name"], the first argument after the connection of call_sql / _sql / the CLI's call, and
# the name of a plan's Sql(...) request.
_USES = (
    re.compile(r"""\bQ\[\s*["'](\w+)["']\s*\]"""),
    re.compile(r"""\b(?:call_sql|_sql|call)\(\s*[\w.]+,\s*["'](\w+)["']"""),
    # a plan's request: Sql("name", params)
    re.compile(r"""\bSql\(\s*["'](\w+)["']"""),
)


def _sources() -> dict[Path, str]:
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
    return {path: path.read_text(encoding="utf-8") for path in files}


def used_names() -> dict[str, set[str]]:
    """{query name: files using it} for the literal uses in src/ and cli/."""
    used: dict[str, set[str]] = {}
    for path, text in _sources().items():
        for pattern in _USES:
            for name in pattern.findall(text):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return used


def passed_names() -> set[str]:
    """Query names written as a string literal anywhere, e.g. handed to a helper that runs
    ``call(conn, query, ...)`` with it: the weaker evidence, enough to count as used."""
    found: set[str] = set()
    for text in _sources().values():
        found.update(w for w in re.findall(r"""["'](\w+)["']""", text) if w in Q)
    return found


def test_queries_file_parses_into_named_statements() -> None:
    text = (ROOT / "sql" / "queries.sql").read_text(encoding="utf-8")
    names = re.findall(r"^-- name: (\w+)$", text, re.M)
    assert names and sorted(names) == sorted(Q)
    assert len(set(names)) == len(names), "a query name is defined twice"
    for name, statement in Q.items():
        assert statement.strip(), f"query {name} is empty"
        assert not statement.lstrip().startswith("--"), f"query {name} has no statement"


def test_every_defined_query_is_used() -> None:
    unused = set(Q) - set(used_names()) - passed_names()
    assert not unused, f"defined in sql/queries.sql but used nowhere in src/ or cli/: {unused}"


def test_every_used_query_is_defined() -> None:
    missing = {name: files for name, files in used_names().items() if name not in Q}
    assert not missing, f"used but not defined in sql/queries.sql: {missing}"


def test_parse_rejects_a_name_defined_twice() -> None:
    text = "-- name: a\n-- doc\nselect 1;\n\n-- name: a\n-- doc\nselect 2;\n"
    try:
        parse(text)
    except ValueError as exc:
        assert "'a'" in str(exc)
    else:
        raise AssertionError("a duplicated query name was accepted")
