"""JSON encoding of arguments, results and payloads within explicit limits; no pickle.

Encoding rejects at the call, naming the path, anything PostgreSQL's jsonb or a later decode
would choke on. This module is also the one door to the codec: decoding (_decoding.py), error
records (_error_records.py) and the limits (_limits.py) are re-exported here. Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb

from ._decoding import loads as loads
from ._error_records import error_json as error_json
from ._error_records import type_name as type_name
from ._errors import SerializationError
from ._limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._limits import MAX_ERROR_MESSAGE as MAX_ERROR_MESSAGE
from ._limits import MAX_ERROR_TRACEBACK as MAX_ERROR_TRACEBACK
from ._limits import RAISE_HINT
from ._limits import Limits as Limits

# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)
_encode_json: Callable[[Any], str] = _ENCODER.encode
_SURROGATE = re.compile("[\ud800-\udfff]")


# --- encoding -------------------------------------------------------------------------------


def _scan(value: Any, limits: Limits, depth: int) -> bool:
    """True if ``value`` (a container at ``depth``) is storable; False: explain it slowly.

    The hot path: no path strings, no recursion, exact-type checks before isinstance.
    """
    t = type(value)
    if t is str:
        return "\x00" not in value
    if t is int:
        return bool(-limits._int_bound < value < limits._int_bound)
    if (
        t is not list
        and t is not tuple
        and t is not dict
        and not isinstance(value, (list, tuple, dict))
    ):
        return _scan_other(value, limits, depth, [])
    bound = limits._int_bound
    max_depth = limits.max_depth
    isfinite = math.isfinite
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        obj, d = stack.pop()
        if d > max_depth:
            return False
        if isinstance(obj, dict):
            if type(obj) is dict:
                items: Any = obj.values()
                keys: Any = obj
            else:  # json.dumps takes a dict subclass's items(); so must the check
                pairs = list(obj.items())
                keys = [k for k, _ in pairs]
                items = [v for _, v in pairs]
            for k in keys:
                if type(k) is str:
                    if "\x00" in k:
                        return False
                elif not isinstance(k, str) or str.__contains__(k, "\x00"):
                    return False
        else:
            items = obj
        d += 1
        for item in items:
            t = type(item)
            if t is str:
                if "\x00" in item:
                    return False
            elif t is int:
                if not -bound < item < bound:
                    return False
            elif t is float:
                if not isfinite(item):
                    return False
            elif t is dict or t is list or t is tuple:
                stack.append((item, d))
            elif item is None or t is bool:
                pass
            elif not _scan_other(item, limits, d, stack):
                return False
    return True


def _scan_other(value: Any, limits: Limits, depth: int, stack: list[tuple[Any, int]]) -> bool:
    # Subclasses (str enums, IntEnum, OrderedDict, named tuples) are encoded by json as their
    # base type.
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return not str.__contains__(value, "\x00")
    if isinstance(value, int):
        return -limits._int_bound < value < limits._int_bound
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple, dict)):
        stack.append((value, depth))
        return True
    return False


def _fmt_key(key: str) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:50] + "...'"


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:  # a user's __repr__ may raise anything
        return f"<{type(obj).__name__} whose repr() fails>"
    return text if len(text) <= 60 else text[:50] + "..."


def _short(path: str) -> str:
    # A path 500 levels deep helps nobody; its start and end do.
    return path if len(path) <= 200 else f"{path[:80]}...{path[-100:]}"


def _explain(value: Any, path: str, limits: Limits, depth: int) -> str | None:
    """The first problem found, with its path; None if there is none (slow, errors only)."""
    # Each entry: value, its path, its depth if a container, the ids of the containers above it.
    stack: list[tuple[Any, str, int, frozenset[int]]] = [(value, path, depth, frozenset())]
    while stack:
        obj, where, d, above = stack.pop()
        if obj is None or isinstance(obj, bool):
            continue
        if isinstance(obj, str):
            problem = _explain_str(obj, where)
            if problem:
                return problem
            continue
        if isinstance(obj, int):
            if not -limits._int_bound < obj < limits._int_bound:
                return (
                    f"{where} is an integer of more than {limits.max_int_digits} digits "
                    f"({obj.bit_length()} bits), over the limit (Limits.max_int_digits): pass it "
                    "as a string, or raise the limit with "
                    + RAISE_HINT.format(field="max_int_digits")
                )
            continue
        if isinstance(obj, float):
            if not math.isfinite(obj):
                return (
                    f"{where} is {obj!r}, which JSON cannot store: pass None or a string "
                    "instead of a non-finite float"
                )
            continue
        if isinstance(obj, (list, tuple, dict)):
            if id(obj) in above:
                return f"{where} contains itself (a circular reference), which JSON cannot store"
            if d > limits.max_depth:
                return (
                    f"{where} is nested deeper than {limits.max_depth} levels of lists and "
                    "dicts (Limits.max_depth): flatten it, or raise the limit with "
                    + RAISE_HINT.format(field="max_depth")
                )
            inner = above | {id(obj)}
            children: list[tuple[Any, str, int, frozenset[int]]] = []
            if isinstance(obj, dict):
                for key, item in list(obj.items()):
                    if not isinstance(key, str):
                        return (
                            f"{where} has a key {_safe_repr(key)} of type "
                            f"{type(key).__name__}; JSON object keys must be strings"
                        )
                    problem = _explain_str(key, f"the key {_fmt_key(key)} of {where}")
                    if problem:
                        return problem
                    children.append((item, _short(f"{where}[{_fmt_key(key)}]"), d + 1, inner))
            else:
                for i, item in enumerate(obj):
                    children.append((item, _short(f"{where}[{i}]"), d + 1, inner))
            stack.extend(reversed(children))  # depth-first, in order: the first problem wins
            continue
        cls = type(obj)
        return (
            f"{where} is a {cls.__module__}.{cls.__qualname__}, which is not "
            "JSON-serializable: pass plain dicts, lists, strings, numbers, booleans or None "
            "(convert dates with .isoformat(), dataclasses with dataclasses.asdict())"
        )
    return None


def _explain_str(text: str, where: str) -> str | None:
    i = str.find(text, "\x00")
    if i >= 0:
        return (
            f"{where} contains a NUL character ('\\x00') at index {i}, which PostgreSQL cannot "
            "store in jsonb: strip it, or encode binary data as base64"
        )
    m = _SURROGATE.search(text)
    if m:
        return (
            f"{where} contains a lone surrogate {m.group()!r} at index {m.start()}, which is not "
            "valid Unicode and cannot be stored: decode bytes with errors='replace' or "
            "'backslashreplace'"
        )
    return None


def _encode(value: Any, path: str, limits: Limits, depth: int) -> str:
    if not _scan(value, limits, depth):
        raise SerializationError(
            _explain(value, path, limits, depth) or f"{path} cannot be stored as JSON"
        )
    try:
        text = _encode_json(value)
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as exc:
        # The scan accepts only what the encoder takes; this is a last line, not a path.
        raise SerializationError(f"{path} cannot be encoded as JSON: {exc}") from exc
    _check_size(text, value, path, limits, depth)
    return text


def _check_size(text: str, value: Any, path: str, limits: Limits, depth: int) -> None:
    size = len(text)
    if size > limits.max_bytes:
        pass  # too large whatever the encoding: a UTF-8 byte per character at least
    elif text.isascii():
        return
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise SerializationError(
                _explain(value, path, limits, depth) or f"{path} is not valid Unicode: {exc}"
            ) from None
        if size <= limits.max_bytes:
            return
    if size == len(text) and not text.isascii():
        size = len(text.encode("utf-8", "surrogatepass"))
    raise SerializationError(
        f"{path} is {size} bytes as JSON, over the limit of {limits.max_bytes} bytes "
        "(Limits.max_bytes): store large data elsewhere (a table, object storage) and pass a "
        "reference, or raise the limit with "
        + RAISE_HINT.format(field="max_bytes")
        + " (values written through SQL: max_value_bytes in pgdurable.settings)"
    )


def dumps(value: Any, path: str = "value", limits: Limits = DEFAULT_LIMITS) -> str:
    """Encode ``value`` as compact JSON text within ``limits``, naming the offending path."""
    return _encode(value, path, limits, 1)


def checked(value: Any, path: str, limits: Limits = DEFAULT_LIMITS) -> Jsonb:
    """Check and encode once; psycopg sends the text as jsonb."""
    text = _encode(value, path, limits, 1)
    return Jsonb(value, dumps=lambda _v: text)


def jsonb(value: Any, path: str = "value", limits: Limits = DEFAULT_LIMITS) -> Jsonb:
    """A parameter that psycopg sends as jsonb, checked first (same as ``checked``)."""
    return checked(value, path, limits)


def encode_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], limits: Limits = DEFAULT_LIMITS
) -> Jsonb:
    """A run's input ``{"args": [...], "kwargs": {...}}``; paths read ``args[0]['items'][3]``."""
    arglist = list(args)
    # The wrapper is depth 1, so args and kwargs are containers at depth 2.
    if not _scan(arglist, limits, 2):
        raise SerializationError(
            _explain(arglist, "args", limits, 2) or "args cannot be stored as JSON"
        )
    if kwargs and not _scan(kwargs, limits, 2):
        raise SerializationError(
            _explain(kwargs, "kwargs", limits, 2) or "kwargs cannot be stored as JSON"
        )
    value = {"args": arglist, "kwargs": kwargs}
    try:
        text = _encode_json(value)
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as exc:
        raise SerializationError(f"the arguments cannot be encoded as JSON: {exc}") from exc
    _check_size(text, value, "the arguments (args and kwargs)", limits, 1)
    return Jsonb(value, dumps=lambda _v: text)
