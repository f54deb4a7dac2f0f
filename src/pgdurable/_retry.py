"""Retry policies and decisions: pure functions, no I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta

from ._durations import seconds

# Far beyond any sane policy; a bound keeps a typo (1e9) from retrying a step forever.
MAX_ATTEMPTS = 10_000


@dataclass(frozen=True)
class Retry:
    """How a step is retried: exponential backoff with jitter, capped at ``max_delay``.

    ``max_attempts`` counts the first try (1 to 10,000). Delays are seconds from 0 to 100 years;
    ``backoff`` is a finite factor >= 1. Delays up to ``inline_limit`` seconds are waited in the
    worker; longer ones suspend the run durably and free the worker slot.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float | None = None
    jitter: bool = True
    inline_limit: float = 5.0

    def __post_init__(self) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(
                f"Retry.max_attempts must be an int (tries in all), got {type(n).__name__} {n!r}"
            )
        if not 1 <= n <= MAX_ATTEMPTS:
            raise ValueError(f"Retry.max_attempts must be from 1 to {MAX_ATTEMPTS}, got {n}")
        for name in ("initial_delay", "max_delay", "inline_limit"):
            value = getattr(self, name)
            secs = seconds(value, f"Retry.{name}", allow_none=name == "max_delay")
            if isinstance(value, timedelta):  # accepted like everywhere else; stored as seconds
                object.__setattr__(self, name, secs)
        b = self.backoff
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"Retry.backoff must be a number, got {type(b).__name__} {b!r}")
        if not math.isfinite(b) or b < 1:
            raise ValueError(f"Retry.backoff must be a finite number >= 1, got {b!r}")
        if not isinstance(self.jitter, bool):
            raise TypeError(f"Retry.jitter must be True or False, got {self.jitter!r}")
        if self.max_delay is not None and self.max_delay < self.initial_delay:
            raise ValueError(
                f"Retry.max_delay ({self.max_delay} s) is below initial_delay "
                f"({self.initial_delay} s): raise max_delay or leave it unset"
            )

    @property
    def cap(self) -> float:
        """The longest delay: max_delay, else 60 s or initial_delay if that is longer."""
        return self.max_delay if self.max_delay is not None else max(60.0, self.initial_delay)

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        cap = self.cap
        if self.initial_delay == 0:
            base = 0.0
        else:
            try:
                base = min(cap, self.initial_delay * self.backoff ** max(failed_attempts - 1, 0))
            except OverflowError:  # 2.0 ** 5000: long past the cap
                base = cap
        if not self.jitter:
            return float(base)
        # Equal jitter: never less than half the backoff, so retries do spread but still back off.
        r = (rng or random).random()
        return base / 2 + r * base / 2

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts


NO_RETRY = Retry(max_attempts=1)
DEFAULT = Retry()
