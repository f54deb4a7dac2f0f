"""Flow control settings of a queue, checked in Python and sent to configure_queue. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._durations import seconds
from ._names import check_queue


def _count(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be from {low} to {high}, got {value}")
    return value


@dataclass(frozen=True)
class Rate:
    """At most ``count`` claims (run starts and resumes) in any window of ``per``:
    ``Rate(100, per=timedelta(minutes=1))``. A sliding window, exact at every instant."""

    count: int
    per: timedelta

    def __post_init__(self) -> None:
        _count("Rate count", self.count, 1, 10_000)
        secs = seconds(self.per, "Rate per", allow_none=False, exclusive_minimum=True)
        object.__setattr__(self, "per", timedelta(seconds=secs))


@dataclass(frozen=True)
class QueueLimits:
    """What ``app.queue(...)`` declares; applied by each worker of the App when it starts."""

    name: str
    concurrency: int | None = None
    key_concurrency: int = 1
    key_fifo: bool = False
    rate_limit: Rate | None = None
    key_rate_limit: Rate | None = None

    def __post_init__(self) -> None:
        check_queue(self.name)
        if self.concurrency is not None:
            _count("concurrency", self.concurrency, 0, 1_000_000)
        _count("key_concurrency", self.key_concurrency, 1, 1_000_000)
        if not isinstance(self.key_fifo, bool):
            raise TypeError(f"key_fifo must be a bool, got {type(self.key_fifo).__name__}")
        for what, rate in (
            ("rate_limit", self.rate_limit),
            ("key_rate_limit", self.key_rate_limit),
        ):
            if rate is not None and not isinstance(rate, Rate):
                raise TypeError(
                    f"{what} must be a pgdurable.Rate(count, per=timedelta(...)), got {rate!r}"
                )

    def params(self) -> tuple[Any, ...]:
        """configure_queue's parameters."""
        rate, key_rate = self.rate_limit, self.key_rate_limit
        return (
            self.name,
            self.concurrency,
            self.key_concurrency,
            self.key_fifo,
            rate.count if rate else None,
            rate.per if rate else None,
            key_rate.count if key_rate else None,
            key_rate.per if key_rate else None,
        )
