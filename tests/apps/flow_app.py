"""Workflows the flow-control tests run on limited queues. Each attempt of the one step logs
when its run was claimed (runs.updated_at, set by the claim; heartbeats leave it alone), when the
step began and ended, on a connection of its own, so a test can measure overlap and rates."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import psycopg

import pgdurable

from .flavours import FlavouredApp

TABLE = """
create table if not exists fc_log (
    id bigserial primary key, queue text not null, key text, run_id uuid not null,
    attempt integer not null, pid integer not null, claimed_at timestamptz not null,
    started timestamptz not null default clock_timestamp(), ended timestamptz)
"""

LIMITED, KEYED, RATED = "fc.limited", "fc.keyed", "fc.rated"
# the limits every worker of the app applies when it starts
CONCURRENCY, KEY_CONCURRENCY, RATE = 3, 2, pgdurable.Rate(5, per=timedelta(seconds=1))


def prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE)


def build(dsn: str) -> pgdurable.App:
    app: pgdurable.App = FlavouredApp(dsn, lease=float(os.environ.get("FLOW_LEASE", "2")))
    app.queue(LIMITED, concurrency=CONCURRENCY)
    app.queue(KEYED, key_concurrency=KEY_CONCURRENCY)
    app.queue(RATED, rate_limit=RATE)

    @app.step()
    def work(queue: str, key: str | None, ms: int) -> str:
        run = pgdurable.current_run()
        assert run is not None
        with psycopg.connect(dsn, autocommit=True) as conn:
            (log_id,) = conn.execute(
                "insert into fc_log (queue, key, run_id, attempt, pid, claimed_at) "
                "select %s, %s, id, attempt, %s, updated_at from pgdurable.runs where id = %s "
                "returning id",
                (queue, key, os.getpid(), run.run_id),
            ).fetchone()
        time.sleep(ms / 1000)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("update fc_log set ended = clock_timestamp() where id = %s", (log_id,))
        return queue

    @app.workflow(name="fc.job")
    def job(queue: str, key: str | None, ms: int) -> str:
        return work(queue, key, ms)

    return app
