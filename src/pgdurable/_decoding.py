"""Decoding stored JSON within explicit limits. Stored data is data: decoding never trusts it
to be small, shallow or well-formed, and turns every failure into a ``SerializationError``
naming what was being read. Pure."""

from __future__ import annotations

import json
from typing import Any

from ._errors import SerializationError
from ._limits import (
    DECODE_SLACK,
    DEFAULT_LIMITS,
    RAISE_HINT,
    Limits,
    NotJsonConstant,
    TooManyDigits,
)


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
    except TooManyDigits as exc:
        raise SerializationError(
            f"{what} cannot be decoded: it holds an integer of {exc.digits} digits, over the "
            f"limit of {limits.max_int_digits} (Limits.max_int_digits); raise the limit with "
            + RAISE_HINT.format(field="max_int_digits")
        ) from None
    except NotJsonConstant as exc:
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
            + RAISE_HINT.format(field="max_bytes")
        )


def _check_depth(value: Any, what: str, limits: Limits) -> None:
    max_depth = limits.max_depth
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, d = stack.pop()
        if d > max_depth:
            raise SerializationError(
                f"{what} cannot be decoded: it is nested deeper than {max_depth} levels "
                "(Limits.max_depth); raise the limit with " + RAISE_HINT.format(field="max_depth")
            )
        d += 1
        # Parsed JSON holds exact dicts and lists only.
        for item in obj.values() if type(obj) is dict else obj:
            t = type(item)
            if t is dict or t is list:
                stack.append((item, d))
