"""Limits on stored JSON values (depth, integer digits, size) and the engine's text caps. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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


class TooManyDigits(Exception):
    """An integer with more digits than the limit, met while decoding."""

    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


class NotJsonConstant(Exception):
    """NaN or Infinity in text that claims to be JSON."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _reject_constant(token: str) -> Any:
    raise NotJsonConstant(token)


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
                raise TooManyDigits(n)
            return int(token)

        object.__setattr__(self, "_int_bound", 10**digits)
        object.__setattr__(self, "_decoder", json.JSONDecoder(parse_constant=_reject_constant))
        object.__setattr__(
            self,
            "_int_decoder",
            json.JSONDecoder(parse_constant=_reject_constant, parse_int=parse_int),
        )


DEFAULT_LIMITS = Limits()

# How an error tells the user to raise a limit.
RAISE_HINT = "App(limits=pgdurable.Limits({field}=...))"
