"""JSON encoding and decoding of arguments, results and errors, within explicit limits; no pickle.

Stored data is data: decoding never trusts it to be small, shallow or well-formed, and turns
every failure into a ``SerializationError`` naming what was being read. Encoding rejects at the
call, naming the path, anything PostgreSQL's jsonb or a later decode would choke on. No I/O here.
"""

from __future__ import annotations

import json
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ._errors import SerializationError

MiB = 1024 * 1024

# Python refuses to convert ints of more than 4300 digits to or from text
# (sys.set_int_max_str_digits), so a higher limit could never be honoured.
MAX_INT_DIGITS_CEILING = 4300
# PostgreSQL prints jsonb numbers in plain notation: the float 1e308 reads back as a 309-digit
# integer, so a lower limit would refuse floats Python wrote.
MIN_INT_DIGITS = 309
# Deeper limits would meet the interpreter's recursion limit (1000 frames, shared with the C
# JSON parser) before ours.
MAX_DEPTH_CEILING = 500
# PostgreSQL refuses jsonb values over 256 MB.
MAX_BYTES_CEILING = 256 * MiB - 1
# An error record (type, message, truncated traceback) must always fit in one stored value.
MIN_BYTES = 1024

# PostgreSQL prints jsonb with a space after each ',' and ':', so the text a worker reads back
# is up to 1.5x the compact text it wrote; decoding allows twice ``max_bytes`` before it refuses
# to parse at all.
DECODE_SLACK = 2

# Caps of the stored exception text, in characters.
MAX_ERROR_MESSAGE = 16 * 1024
MAX_ERROR_TRACEBACK = 256 * 1024
MAX_ERROR_TYPE = 200


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"Limits.{name} must be an integer from {lo} to {hi}, got {value!r}")


class _TooManyDigits(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


class _NotJsonConstant(Exception):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _reject_constant(token: str) -> Any:
    raise _NotJsonConstant(token)


@dataclass(frozen=True)
class Limits:
    """Bounds on one stored JSON value (an input, a result, a payload, a checkpoint).

    ``max_depth``: arrays/objects nested around the deepest value, the outermost counted
    (``1`` has depth 0, ``[1]`` and ``{"a": 1}`` depth 1, ``[[1]]`` depth 2); a run's input
    ``{"args": [...], "kwargs": {...}}`` uses two levels itself. ``max_int_digits``: decimal
    digits of one integer (the sign is not a digit). ``max_bytes``: UTF-8 size of the compact
    JSON text. Values written through SQL are bounded by the same settings in
    ``pgdurable.settings``.

    Ranges: max_depth 2..500 (the interpreter's recursion limit is near), max_int_digits
    309..4300 (PostgreSQL prints the float 1e308 as a 309-digit integer; Python converts at most
    4300 digits), max_bytes 1 KiB..256 MiB (an error record must fit; jsonb's own maximum).
    Reading a value back allows twice max_bytes, as PostgreSQL prints jsonb with spaces and
    numbers in plain notation.
    """

    max_depth: int = 100
    max_int_digits: int = 1000
    max_bytes: int = 32 * MiB
    # Derived once, read on every encode/decode.
    _int_bound: int = field(init=False, repr=False, compare=False)
    _decoder: json.JSONDecoder = field(init=False, repr=False, compare=False)
    _int_decoder: json.JSONDecoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("max_depth", self.max_depth, 2, MAX_DEPTH_CEILING)
        _check_int("max_int_digits", self.max_int_digits, MIN_INT_DIGITS, MAX_INT_DIGITS_CEILING)
        _check_int("max_bytes", self.max_bytes, MIN_BYTES, MAX_BYTES_CEILING)
        digits = self.max_int_digits

        def parse_int(token: str) -> int:
            n = len(token) - (token[0] == "-")
            if n > digits:
                raise _TooManyDigits(n)
            return int(token)

        object.__setattr__(self, "_int_bound", 10**digits)
        object.__setattr__(self, "_decoder", json.JSONDecoder(parse_constant=_reject_constant))
        object.__setattr__(
            self,
            "_int_decoder",
            json.JSONDecoder(parse_constant=_reject_constant, parse_int=parse_int),
        )


DEFAULT_LIMITS = Limits()

_RAISE_HINT = "App(limits=pgdurable.Limits({field}=...))"

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
                    + _RAISE_HINT.format(field="max_int_digits")
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
                    + _RAISE_HINT.format(field="max_depth")
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
        + _RAISE_HINT.format(field="max_bytes")
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


# --- decoding -------------------------------------------------------------------------------


def loads(text: str | bytes | None, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode stored JSON text; bad or out-of-limit data raises only ``SerializationError``.

    ``what`` names the value for the message, e.g. ``"input of run 1234 (workflow p.echo)"``.
    Bytes are UTF-8 JSON, optionally in jsonb's binary wire format (a leading version byte 1).
    """
    if text is None:
        return None
    try:
        return _loads(text, what, limits)
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError(
            f"{what} cannot be decoded: it is nested too deeply (the limit is "
            f"{limits.max_depth} levels, Limits.max_depth)"
        ) from None
    except MemoryError:
        raise SerializationError(f"{what} cannot be decoded: out of memory") from None
    except _TooManyDigits as exc:
        raise SerializationError(
            f"{what} cannot be decoded: it holds an integer of {exc.digits} digits, over the "
            f"limit of {limits.max_int_digits} (Limits.max_int_digits); raise the limit with "
            + _RAISE_HINT.format(field="max_int_digits")
        ) from None
    except _NotJsonConstant as exc:
        raise SerializationError(
            f"{what} cannot be decoded: {exc.token} is not a JSON value"
        ) from None
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{what} cannot be decoded: not valid UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from None
    except Exception as exc:  # any other failure is still this value's, never the worker's
        raise SerializationError(f"{what} cannot be decoded: {type(exc).__name__}: {exc}") from None


def _loads(data: str | bytes, what: str, limits: Limits) -> Any:
    if not isinstance(data, str):
        raw = bytes(data)
        if raw[:1] == b"\x01":
            raw = raw[1:]
        size = len(raw)
        _check_decode_size(size, what, limits)
        text = raw.decode("utf-8")
    else:
        text = data
        size = len(text)  # characters: never more than the UTF-8 bytes
        _check_decode_size(size, what, limits)
    decoder = limits._decoder
    # An integer over the limit needs a run of more digits than the limit. Looking for one in
    # bytes is a C-speed scan; only then is the parser's per-integer hook worth its cost.
    if size > limits.max_int_digits and _long_digit_run(text, limits.max_int_digits):
        decoder = limits._int_decoder
    value = decoder.decode(text)
    # Nesting d levels needs 2*d characters and d opening brackets.
    if (
        size > 2 * limits.max_depth
        and (type(value) is list or type(value) is dict)
        and text.count("[") + text.count("{") > limits.max_depth
    ):
        _check_depth(value, what, limits)
    return value


_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _long_digit_run(text: str, digits: int) -> bool:
    # False positives (digits inside a string) only cost the slower, exact hook.
    mapped = text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO)
    return b"0" * (digits + 1) in mapped


def _check_decode_size(size: int, what: str, limits: Limits) -> None:
    ceiling = limits.max_bytes * DECODE_SLACK
    if size > ceiling:
        raise SerializationError(
            f"{what} is {size} bytes of JSON, over the {ceiling} bytes this App reads "
            f"(twice Limits.max_bytes={limits.max_bytes}); raise the limit with "
            + _RAISE_HINT.format(field="max_bytes")
        )


def _check_depth(value: Any, what: str, limits: Limits) -> None:
    max_depth = limits.max_depth
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, d = stack.pop()
        if d > max_depth:
            raise SerializationError(
                f"{what} cannot be decoded: it is nested deeper than {max_depth} levels "
                "(Limits.max_depth); raise the limit with " + _RAISE_HINT.format(field="max_depth")
            )
        d += 1
        # Parsed JSON holds exact dicts and lists only.
        for item in obj.values() if type(obj) is dict else obj:
            t = type(item)
            if t is dict or t is list:
                stack.append((item, d))


# --- errors ---------------------------------------------------------------------------------


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
