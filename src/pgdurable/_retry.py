"""Retry policies and decisions: pure functions, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    """How a step is retried: exponential backoff with jitter, capped at ``max_delay``.

    ``max_attempts`` counts the first try. Delays up to ``inline_limit`` seconds are waited in
    the worker; longer ones suspend the run durably and free the worker slot.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float | None = None
    jitter: bool = True
    inline_limit: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay < 0 or (self.max_delay is not None and self.max_delay < 0):
            raise ValueError("Retry delays must be >= 0 seconds")
        if self.max_delay is not None and self.max_delay < self.initial_delay:
            raise ValueError(
                f"Retry.max_delay ({self.max_delay} s) is below initial_delay "
                f"({self.initial_delay} s): raise max_delay or leave it unset"
            )
        if self.backoff < 1:
            raise ValueError(f"Retry.backoff must be >= 1, got {self.backoff}")

    @property
    def cap(self) -> float:
        """The longest delay: max_delay, else 60 s or initial_delay if that is longer."""
        return self.max_delay if self.max_delay is not None else max(60.0, self.initial_delay)

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        base = min(self.cap, self.initial_delay * self.backoff ** (failed_attempts - 1))
        if not self.jitter:
            return base
        # Equal jitter: never less than half the backoff, so retries do spread but still back off.
        r = (rng or random).random()
        return base / 2 + r * base / 2

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts


NO_RETRY = Retry(max_attempts=1)
DEFAULT = Retry()
