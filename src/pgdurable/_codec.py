"""JSON encoding of arguments, results and errors; never pickle."""

from __future__ import annotations

import json
import math
import traceback
from typing import Any

from psycopg.types.json import Jsonb

from ._errors import SerializationError


def _check(value: Any, path: str) -> None:
    # json.dumps would accept tuples silently and reject sets with a message naming no path;
    # walking first gives a precise error before anything is written.
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{path} is {value!r}, which JSON cannot store")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; JSON object keys "
                    "must be strings"
                )
            _check(item, f"{path}[{key!r}]")
        return
    raise SerializationError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON-serializable: pass plain dicts, lists, strings, numbers, booleans or None "
        "(convert dates with .isoformat(), dataclasses with dataclasses.asdict())"
    )


def dumps(value: Any, path: str = "value") -> str:
    """Encode ``value`` as JSON text, naming the offending path on failure."""
    _check(value, path)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def jsonb(value: Any, path: str = "value") -> Jsonb:
    """A parameter that psycopg sends as jsonb, checked first."""
    return Jsonb(value, dumps=lambda v: dumps(v, path))


def encode_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Jsonb:
    _check(list(args), "args")
    _check(kwargs, "kwargs")
    return Jsonb({"args": list(args), "kwargs": kwargs}, dumps=_fast_dumps)


def _fast_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def checked(value: Any, path: str) -> Jsonb:
    """Check then wrap; the check is the expensive part and runs once."""
    _check(value, path)
    return Jsonb(value, dumps=_fast_dumps)


def error_json(exc: BaseException) -> dict[str, Any]:
    """The stored form of an exception: type, message and traceback text."""
    cls = type(exc)
    module = cls.__module__
    if module.startswith("pgdurable._"):
        module = "pgdurable"  # the public path, importable when the error is replayed
    name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }
