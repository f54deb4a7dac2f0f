"""The engine clock of a test database, moved forward on demand (pgdurable.shift_clock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .._db import call_sql
from .._errors import translate
from .._queries import Q
from ._inprocess import DurableWorker, wait_idle

# tick() handles at most 100 timers a call; this bounds the loop, not the timers that fire.
_MAX_TICKS = 10_000


class DurableClock:
    """Engine time of one test database. ``advance(days=3)`` moves it forward and fires every
    timer that is then due, so a run sleeping three days wakes at once."""

    def __init__(self, dsn: str, workers: Sequence[DurableWorker] = ()) -> None:
        self.dsn = dsn
        self._workers = workers

    def __repr__(self) -> str:
        return "<DurableClock>"

    def now(self) -> datetime:
        """Engine time: what ``pgdurable.now()`` returns in SQL and workflows."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(Q["testing_engine_now"]).fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    def advance(
        self,
        delta: timedelta | None = None,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        milliseconds: float = 0,
        microseconds: float = 0,
        settle: bool | None = None,
        timeout: float = 30.0,
    ) -> datetime:
        """Move engine time forward by ``delta`` plus the timedelta keywords; return the new
        engine time. Timers that fall due fire at once and wake the worker (NOTIFY).

        ``settle`` (default: when a ``durable_worker`` runs) first waits, like ``drain()``,
        until nothing is running or due, so a run just started reaches its sleep before time
        moves, and no lease is expired under a running step. ``settle=False`` moves the clock
        now: runs that are running then lose their leases and are recovered.
        """
        step = (delta if delta is not None else timedelta()) + timedelta(
            weeks=weeks,
            days=days,
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            milliseconds=milliseconds,
            microseconds=microseconds,
        )
        if step <= timedelta(0):
            raise ValueError(
                f"advance() moves the clock forward only, got {step}: leases and timers count "
                "on engine time never going back; pass a positive delta or days=, hours=, ..."
            )
        running = [w for w in self._workers if w.running]
        if settle if settle is not None else bool(running):
            wait_idle(self.dsn, running, timeout, "advance() settling before moving the clock")
        try:
            with psycopg.connect(self.dsn) as conn:
                # One transaction: the timers fire, and their NOTIFYs leave, with the shift.
                row = conn.execute(Q["testing_shift_clock"], (step,)).fetchone()
                for _ in range(_MAX_TICKS):
                    if not _first(call_sql(conn, "tick_due").fetchone()):
                        break
        except psycopg.Error as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from exc
        assert row is not None
        now: datetime = row[0]
        return now


def _first(row: tuple[Any, ...] | None) -> Any:
    return None if row is None else row[0]
