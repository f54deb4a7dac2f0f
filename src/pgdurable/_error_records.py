"""Stored error records: any exception as {"type", "message", "traceback"}, always storable
(NUL escaped, texts capped, the whole record fitted to the size limit). Pure."""

from __future__ import annotations

import json
import traceback
from typing import Any

import psycopg

from ._limits import (
    DEFAULT_LIMITS,
    MAX_ERROR_MESSAGE,
    MAX_ERROR_TRACEBACK,
    MAX_ERROR_TYPE,
    Limits,
)

_encode_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


def type_name(cls: type) -> str:
    """The stored name of an exception class: bare for builtins, public path for pgdurable."""
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = cls.__name__
    if not isinstance(module, str) or module == "builtins":
        return qualname
    if module.startswith("pgdurable._"):
        module = "pgdurable"  # the public path, where replay finds it
    return f"{module}.{qualname}"


def _escape(text: str) -> str:
    """Text jsonb and UTF-8 accept, still readable: NUL and lone surrogates become visible."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _truncate(text: str, cap: int, keep_end: bool) -> str:
    """At most ``cap`` characters, the cut marked ``[truncated N characters]``."""
    if len(text) <= cap:
        return text
    # The marker's own length, with the widest N it can show.
    keep = max(cap - len("\n... [truncated  characters] ...\n") - len(str(len(text))), 0)
    cut = len(text) - keep
    if not keep_end:
        return f"{text[:keep]}... [truncated {cut} characters]"
    # A traceback's end (innermost frame, exception line) matters most; keep some of its start.
    head = keep // 4
    return (
        f"{text[:head]}\n... [truncated {cut} characters] ...\n{text[len(text) - (keep - head) :]}"
    )


def _safe_text(exc: BaseException, name: str) -> str:
    try:
        return str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        first = type(err).__name__
    try:
        return f"<str() of {name} raised {first}; repr: {exc!r}>"
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        return f"<str() of {name} raised {first}, repr() raised {type(err).__name__}>"


def _safe_traceback(exc: BaseException, name: str, message: str) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        failed = type(err).__name__
    # Formatting ran user code (a loader's get_source, notes) that failed: the frames alone.
    lines = [f"Traceback (most recent call last; formatting failed with {failed}):\n"]
    try:
        tb = exc.__traceback__
        while tb is not None and len(lines) < 1000:
            code = tb.tb_frame.f_code
            lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
            tb = tb.tb_next
    except Exception:  # broken frames must not stop the error from being stored
        lines.append("  <frames unavailable>\n")
    lines.append(f"{name}: {message}\n")
    return "".join(lines)


def error_json(exc: BaseException, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The stored form of an exception: ``{"type", "message", "traceback"}`` (+ ``"sqlstate"``).

    Never raises (except KeyboardInterrupt): an exception whose ``__str__``/``__repr__`` or
    traceback formatting fails gets a placeholder. NUL characters and lone surrogates are
    escaped so the record is storable; the message is capped at 16 Ki characters (its start
    kept), the traceback at 256 Ki (start and end kept), each cut marked
    ``[truncated N characters]``, and the whole record fits ``limits.max_bytes``.
    """
    name = _truncate(_escape(type_name(type(exc))), MAX_ERROR_TYPE, keep_end=False)
    message = _safe_text(exc, name)
    record: dict[str, Any] = {
        "type": name,
        "message": _truncate(_escape(message), MAX_ERROR_MESSAGE, keep_end=False),
        "traceback": _truncate(
            _escape(_safe_traceback(exc, name, message)), MAX_ERROR_TRACEBACK, keep_end=True
        ),
    }
    if isinstance(exc, psycopg.Error):
        try:
            state = exc.sqlstate
        except Exception:  # a subclass with a broken property: no SQLSTATE then
            state = None
        if isinstance(state, str) and len(state) == 5 and state.isalnum() and state.isascii():
            record["sqlstate"] = state
    return _fit(record, limits)


def _fit(record: dict[str, Any], limits: Limits) -> dict[str, Any]:
    # The texts are clean (escaped, capped) strings: only the size can be over, when the App's
    # max_bytes is small. Shrink the traceback first, then the message.
    for key in ("traceback", "message"):
        for _ in range(8):
            size = len(_encode_json(record).encode("utf-8"))
            if size <= limits.max_bytes:
                return record
            text: str = record[key]
            if not text:
                break
            text_bytes = len(_encode_json(text).encode("utf-8")) - 2
            budget = limits.max_bytes - (size - text_bytes) - 64  # room for the marker
            # Characters in proportion: escapes and multi-byte characters cost more than one.
            cap = len(text) * budget // text_bytes if budget > 0 else 0
            record[key] = _truncate(text, cap, keep_end=key == "traceback") if cap > 0 else ""
    return record
