"""Firing schedules: a worker takes the schedules due by engine time (locked, skipping those
another worker fires), works out their ticks with cron (_schedules.py) and starts one run per
tick through ``fire_schedule``, all in one transaction. Run by every worker's listener thread."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import psycopg

from ._db import call_sql
from ._schedules import Firing, firing

log = logging.getLogger("pgdurable.schedules")

# Schedules fired per transaction; more wait for the next round (a second later).
BATCH = 50
# A schedule whose cron cannot be read (written by SQL with a typo) is retried this much later.
RETRY_BROKEN = timedelta(hours=1)


def fire_due(conn: psycopg.Connection[Any]) -> int:
    """Fire every schedule due now (at most BATCH); returns the runs started."""
    started = 0
    with conn.transaction():
        for name, cron, tz, catchup, cmax, due_at, now in call_sql(
            conn, "due_schedules", (BATCH,)
        ).fetchall():
            try:
                plan = firing(cron, tz, due_at, now, catchup, cmax)
            except ValueError as exc:
                log.error(
                    "schedule %s cannot fire: %s; it is retried in an hour (fix it with "
                    "`pgdurable schedules add` or delete it)",
                    name,
                    exc,
                    extra={"schedule": name},
                )
                plan = Firing([], now + RETRY_BROKEN, 0)
            if plan.skipped:
                log.warning(
                    "schedule %s missed %s tick(s) (catchup=%s): they start no run",
                    name,
                    plan.skipped,
                    catchup,
                    extra={"schedule": name, "skipped": plan.skipped},
                )
            runs = call_sql(conn, "fire_schedule", (name, plan.ticks, plan.next_at)).fetchall()
            started += len(runs)
    return started
