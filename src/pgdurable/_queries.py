"""The named statements of sql/queries.sql, loaded once. Python never builds SQL text."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ._sqlfiles import read_sql

if TYPE_CHECKING:
    from typing_extensions import LiteralString
else:
    LiteralString = str

_BLOCK = re.compile(r"^-- name: (\w+)\n((?:--.*\n)*)", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a queries file into {name: statement}; comments after the name are the docs."""
    found: dict[str, LiteralString] = {}
    marks = list(_BLOCK.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        if mark.group(1) in found:
            raise ValueError(f"query {mark.group(1)!r} is defined twice in queries.sql")
        # The file is part of the package, not user input: it is a literal in all but syntax.
        found[mark.group(1)] = body
    return found


Q = parse(read_sql("queries.sql"))
