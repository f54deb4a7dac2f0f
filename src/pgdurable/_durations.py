"""Validation of every duration an API takes (sleep, timeouts, delays, leases); no I/O.

A bad duration fails at the call with the option's name; without this check NaN, infinity or
an absurd value would reach PostgreSQL and fail later as "interval out of range", or loop.
"""

from __future__ import annotations

import math
import numbers
from datetime import timedelta
from typing import Literal, overload

# 100 years: longer than any sane wait, far below PostgreSQL's interval range.
MAX_SECONDS = 100 * 365.25 * 86400.0


def _fmt(x: float) -> str:
    return f"{x:g}" if x != MAX_SECONDS else f"{x:g} (100 years)"


@overload
def seconds(
    value: float | timedelta,
    what: str,
    *,
    allow_none: Literal[False],
    minimum: float = ...,
    exclusive_minimum: bool = ...,
    maximum: float = ...,
) -> float: ...


@overload
def seconds(
    value: float | timedelta | None,
    what: str,
    *,
    allow_none: bool = ...,
    minimum: float = ...,
    exclusive_minimum: bool = ...,
    maximum: float = ...,
) -> float | None: ...


def seconds(
    value: float | timedelta | None,
    what: str,
    *,
    allow_none: bool = True,
    minimum: float = 0.0,
    exclusive_minimum: bool = False,
    maximum: float = MAX_SECONDS,
) -> float | None:
    """``value`` in seconds as a float, checked; ``what`` names it in the error.

    Accepts an int, a float (or another real number) or a ``timedelta``; None only with
    ``allow_none``. Wrong types raise ``TypeError``; NaN, infinity and values outside
    ``[minimum, maximum]`` (``(minimum, maximum]`` with ``exclusive_minimum``) ``ValueError``.
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{what} is required: a number of seconds or a datetime.timedelta")
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        # bool is an int, and "30" or "30s" would be guessed at: both are mistakes here.
        raise TypeError(
            f"{what} must be a number of seconds or a datetime.timedelta, got "
            f"{type(value).__name__} {value!r}"
        )
    else:
        try:
            secs = float(value)
        except (OverflowError, ValueError, TypeError):
            secs = math.inf if value > 0 else -math.inf
    if math.isnan(secs):
        allowed = _allowed(minimum, exclusive_minimum, maximum)
        raise ValueError(f"{what} is NaN: pass a number of seconds, {allowed}")
    if (
        math.isinf(secs)
        or secs > maximum
        or secs < minimum
        or (exclusive_minimum and secs == minimum)
    ):
        allowed = _allowed(minimum, exclusive_minimum, maximum)
        raise ValueError(f"{what} is {value!r}, out of range: it must be {allowed}")
    return secs


def _allowed(minimum: float, exclusive_minimum: bool, maximum: float) -> str:
    """The range of an option, for its error message (built only when one is raised)."""
    low = "greater than" if exclusive_minimum else "at least"
    return f"{low} {_fmt(minimum)} and at most {_fmt(maximum)} seconds"
