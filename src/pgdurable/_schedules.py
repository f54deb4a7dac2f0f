"""Schedules: a cron expression in a time zone, checked here and turned into the ticks a firing
must start runs for. Pure: the clock is an argument (the engine's, pgdurable.now()).

Cron is evaluated by ``cronsim`` (see docs/schedules.md for why), with its daylight-saving rules:
a time that does not exist on a spring-forward day fires at the first time after the gap; a time
that happens twice on a fall-back day fires once (a job of every hour fires in both hours).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from psycopg.types.json import Jsonb

from ._codec import encode_input
from ._names import check_name, check_queue

CATCHUP = ("skip", "latest", "all")
OVERLAP = ("allow", "skip", "queue")
# "skip": a tick missed by less than this still fires (a worker busy for a moment, a restart)
SKIP_GRACE = timedelta(seconds=60)


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from exc


def check_cron(cron: str, tz: str = "UTC") -> str:
    """Raise ValueError naming the problem unless ``cron`` is a cron expression cronsim reads:
    5 fields (minute hour day month weekday), or 6 with seconds first."""
    if not isinstance(cron, str) or not cron.strip() or len(cron) > 500:
        raise ValueError(f"a schedule's cron must be a non-empty string, got {cron!r}")
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=zone(tz)))
    except CronSimError as exc:
        fields = len(cron.split())
        hint = (
            " (a seconds field needs cronsim 2.7 or later, on Python 3.11+)" if fields == 6 else ""
        )
        raise ValueError(
            f"invalid cron expression {cron!r}: {exc}{hint}. Use 5 fields, minute hour "
            "day-of-month month day-of-week (e.g. '*/5 * * * *' or '30 2 * * 1-5'), or 6 with "
            "seconds first"
        ) from exc
    return cron


def next_tick(cron: str, tz: str, after: datetime) -> datetime:
    """The first tick strictly after ``after``, in UTC."""
    local = after.astimezone(zone(tz)).replace(microsecond=0)
    tick = next(CronSim(cron, local))
    return tick.astimezone(timezone.utc)


@dataclass(frozen=True)
class Firing:
    """What one firing of a schedule does: start runs for ``ticks`` (oldest first), then wait
    for ``next_at``; ``skipped`` missed ticks fired nothing (catch-up policy)."""

    ticks: list[datetime]
    next_at: datetime
    skipped: int


def firing(
    cron: str,
    tz: str,
    due_at: datetime | None,
    now: datetime,
    catchup: str,
    catchup_max: int,
) -> Firing:
    """The ticks due by ``now`` from ``due_at`` (the schedule's next_fire_at; None: a new or
    changed schedule, which first fires at its next tick) under the catch-up policy: ``all``
    fires every missed tick (the last ``catchup_max`` of them), ``latest`` one run for the
    newest, ``skip`` only a tick missed by less than a minute."""
    following = next_tick(cron, tz, now)
    if due_at is None or due_at > now:
        return Firing([], due_at or following, 0)
    newest = _latest_tick(cron, tz, now)
    if newest is None or newest < due_at:
        return Firing([], following, 0)
    if catchup == "latest" or catchup == "skip":
        fire = [newest] if catchup == "latest" or now - newest <= SKIP_GRACE else []
        missed = _count_between(cron, tz, due_at, newest) - len(fire)
        return Firing(fire, following, missed)
    ticks: list[datetime] = []
    total = 0
    for tick in _ticks_from(cron, tz, due_at):
        if tick > now or total >= MAX_COUNTED:
            break
        total += 1
        ticks.append(tick)
        if len(ticks) > catchup_max:
            ticks.pop(0)
    return Firing(ticks, following, total - len(ticks))


# Ticks counted one by one when a schedule missed many (a per-second cron down for days).
MAX_COUNTED = 100_000


def _ticks_from(cron: str, tz: str, start: datetime) -> Iterator[datetime]:
    """``start`` if it is a tick, then every tick after it, in UTC."""
    local = (start - timedelta(seconds=1)).astimezone(zone(tz)).replace(microsecond=0)
    for tick in CronSim(cron, local):
        yield tick.astimezone(timezone.utc)


def _latest_tick(cron: str, tz: str, now: datetime) -> datetime | None:
    local = (now + timedelta(seconds=1)).astimezone(zone(tz)).replace(microsecond=0)
    tick = next(CronSim(cron, local, reverse=True), None)
    return None if tick is None else tick.astimezone(timezone.utc)


def _count_between(cron: str, tz: str, first: datetime, last: datetime) -> int:
    count = 0
    for tick in _ticks_from(cron, tz, first):
        if tick > last or count >= MAX_COUNTED:
            break
        count += 1
    return count


@dataclass(frozen=True)
class ScheduleSpec:
    """What ``@app.workflow(schedule=...)`` and ``app.schedule(...)`` declare; written to the
    database (``pgdurable.upsert_schedule``) by each worker of the App when it starts."""

    name: str
    workflow: str
    cron: str
    tz: str = "UTC"
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] | None = None
    queue: str | None = None
    catchup: str = "latest"
    catchup_max: int = 100
    overlap: str = "allow"

    def __post_init__(self) -> None:
        check_name("schedule", self.name)
        zone(self.tz)
        check_cron(self.cron, self.tz)
        if self.catchup not in CATCHUP:
            raise ValueError(f"catchup must be one of {', '.join(CATCHUP)}, got {self.catchup!r}")
        if self.overlap not in OVERLAP:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, got {self.overlap!r}")
        if (
            isinstance(self.catchup_max, bool)
            or not isinstance(self.catchup_max, int)
            or not 1 <= self.catchup_max <= 10_000
        ):
            raise ValueError(
                f"catchup_max must be an int from 1 to 10000, got {self.catchup_max!r}"
            )
        if self.queue is not None:
            check_queue(self.queue)

    def params(self, limits: Any) -> tuple[Any, ...]:
        """upsert_schedule's parameters, the input encoded within the App's ``limits``."""
        options: dict[str, Any] = {
            "catchup": self.catchup,
            "catchup_max": self.catchup_max,
            "overlap": self.overlap,
        }
        if self.queue is not None:
            options["queue"] = self.queue
        payload = encode_input(tuple(self.args), dict(self.kwargs or {}), limits)
        return (self.name, self.workflow, self.cron, self.tz, payload, Jsonb(options))
