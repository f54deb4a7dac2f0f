"""How fast the dashboard's runs page is with a million runs in the table.

    python bench/dashboard_runs_page.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
    python bench/dashboard_runs_page.py --runs 100000      # a quicker, smaller table

Creates a scratch database on the server of --dsn (and drops it at the end), installs the
schema, fills pgdurable.runs with --runs rows in one set-based INSERT ... SELECT generate_series
(a benchmark fixture written straight into the table, not the engine's start path: statuses
mixed as in a long-lived system, 30 days of history, two checkpoints per run; limits on the five
queues, 200 schedules, an audit entry per ten runs), then times the runs page through the ASGI
app (no network, no browser): the median of 20 requests for the first page, a deep keyset page,
filtered pages, a search, the counts, a run, and the queues, schedules, workers, workflows and
audit pages. It prints the plan of
every page's query (EXPLAIN ANALYZE) and says which read a whole table.

With --try-index it then creates the index the runs page's keyset wants, (created_at, id), in
the scratch database only, and times everything again. Needs the dashboard extra and httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgdurable._schema import init_schema
from pgdurable.dashboard import create_app
from pgdurable.dashboard._runs import RunFilter
from pgdurable.dashboard._store import QUERIES

# Per 1000 runs: 900 completed, 50 failed, 20 cancelled, 10 pending, 10 sleeping, 8 waiting,
# 2 running. Created one every 2.592 s over the last 30 days, newest last.
FILL = """
insert into pgdurable.runs (
    id, workflow_id, workflow_name, queue_name, status, input, output, error, attempt,
    worker_id, lease_expires_at, heartbeat_at, available_at, wait_for, created_at, started_at,
    updated_at, finished_at)
select gen_random_uuid(), 'order-' || g, 'wf_' || (g %% 20), 'q' || (g %% 5), s.status,
       jsonb_build_object('args', jsonb_build_array('order-' || g, g %% 997),
                          'kwargs', '{}'::jsonb),
       case when s.status = 'completed' then jsonb_build_object('charged', g %% 997) end,
       case when s.status in ('failed', 'cancelled') then jsonb_build_object(
           'type', 'RuntimeError', 'message', 'card declined for order-' || g,
           'traceback', 'Traceback (most recent call last):\n  ...\nRuntimeError') end,
       case when s.status = 'pending' then 0 else 1 end,
       case when s.status = 'running' then 'bench-worker' end,
       case when s.status = 'running' then now() + interval '1 day' end,
       case when s.status <> 'pending' then t.at + interval '1 second' end,
       t.at,
       case when s.status = 'waiting' then 'event:approve-' || g end,
       t.at,
       case when s.status <> 'pending' then t.at + interval '1 second' end,
       t.at + interval '5 seconds',
       case when s.status in ('completed', 'failed', 'cancelled')
            then t.at + interval '5 seconds' end
  from generate_series(1, %(n)s) g
 cross join lateral (select now() - make_interval(secs => (%(n)s - g) * 2592000.0 / %(n)s) as at) t
 cross join lateral (select case
        when g %% 1000 < 900 then 'completed' when g %% 1000 < 950 then 'failed'
        when g %% 1000 < 970 then 'cancelled' when g %% 1000 < 980 then 'pending'
        when g %% 1000 < 990 then 'sleeping' when g %% 1000 < 998 then 'waiting'
        else 'running' end as status) s
"""
TIMERS = """
insert into pgdurable.timers (run_id, fire_at, reason)
select id, now() + interval '1 hour', 'sleep' from pgdurable.runs where status = 'sleeping'
"""
CHECKPOINTS = """
insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, run_attempt,
                                   started_at, completed_at)
select r.id, k.key, k.seq, 'step', k.key, '"ok"', 1, r.created_at + interval '1 second',
       r.created_at + make_interval(secs => 2 + k.seq)
  from pgdurable.runs r
 cross join (values (0, 'reserve'), (1, 'charge')) k(seq, key)
 where r.status <> 'pending'
"""
# Flow control on the five queues, 200 schedules and an audit entry per ten runs, so the queues,
# schedules, audit and run pages read what a long-lived system holds.
QUEUES = """
select pgdurable.configure_queue('q' || g, p_concurrency => 10 * g, p_rate_count => 100,
                                 p_rate_period => interval '1 minute')
  from generate_series(0, 4) g
"""
SCHEDULES = """
select pgdurable.upsert_schedule('report-' || g, 'wf_' || (g % 20), '*/15 * * * *', 'UTC')
  from generate_series(1, 200) g
"""
AUDIT = """
insert into pgdurable.audit_log (at, actor, action, run_id)
select r.created_at + interval '1 minute', 'dashboard:ops@10.0.0.1', 'retry', r.id
  from pgdurable.runs r where r.workflow_id like '%0'
"""
INDEX = "create index runs_created_idx on pgdurable.runs (created_at, id)"
REPEAT = 20


def _db(dsn: str, name: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**params)


def fill(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        init_schema(conn)
        for label, sql, params in (
            ("runs", FILL, {"n": n}),
            ("timers", TIMERS, None),
            ("checkpoints", CHECKPOINTS, None),
            ("queue settings", QUEUES, None),
            ("schedules", SCHEDULES, None),
            ("audit entries", AUDIT, None),
        ):
            t0 = time.perf_counter()
            rows = conn.execute(sql, params).rowcount  # type: ignore[arg-type]
            print(f"  inserted {rows:,} {label} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        conn.execute(
            "vacuum analyze pgdurable.runs, pgdurable.checkpoints, pgdurable.timers, "
            "pgdurable.audit_log"
        )
        print(f"  vacuum analyze in {time.perf_counter() - t0:.1f} s")


def pages(dsn: str) -> dict[str, str]:
    """The URLs to time: the first page, a keyset page 90% of the way down, filtered pages."""
    with psycopg.connect(dsn) as conn:
        deep = conn.execute(
            "select created_at, id from pgdurable.runs order by created_at, id "
            "offset (select count(*) / 10 from pgdurable.runs) limit 1"
        ).fetchone()
        failed = conn.execute(
            "select workflow_id, id from pgdurable.runs where status = 'failed' "
            "order by created_at limit 1 offset 100"
        ).fetchone()
    assert deep is not None and failed is not None
    cursor = f"{deep[0].isoformat()}|{deep[1]}"
    return {
        "first page": "/runs",
        "deep keyset page (90% down)": "/runs?" + RunFilter(before=cursor).query(),
        "filtered: status=failed": "/runs?status=failed",
        "filtered: status+workflow+queue": "/runs?status=failed&workflow=wf_7&queue=q2",
        "filtered: since 2h": "/runs?since=2h",
        "search: workflow id contains": "/runs?" + RunFilter(search=failed[0]).query(),
        "counts by status (polled)": "/runs/counts",
        "run page (failed, with timeline)": f"/runs/{failed[1]}",
        "queues page (with flow control)": "/queues",
        "schedules page (200)": "/schedules",
        "audit page (newest of 1/10 runs)": "/audit",
        "workers page": "/workers",
        "workflows page": "/workflows",
    }


async def time_pages(dsn: str, urls: dict[str, str]) -> dict[str, float]:
    app = create_app(dsn)
    medians = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for label, url in urls.items():
            for _ in range(2):  # warm the pool, the plan, the cache
                (await client.get(url)).raise_for_status()
            took = []
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                response = await client.get(url)
                took.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
            medians[label] = statistics.median(took)
    app.state.dashboard.store.close()
    return medians


def explain(dsn: str, urls: dict[str, str]) -> dict[str, str]:
    """EXPLAIN ANALYZE of the query behind each page; returns {page: the scan it used}."""
    found = {}
    with psycopg.connect(dsn) as conn:
        now = conn.execute("select pgdurable.now()").fetchone()[0]  # type: ignore[index]
        for label, url in urls.items():
            if not url.startswith("/runs?") and url not in ("/runs", "/runs/counts"):
                found[label] = "not explained here"
                continue
            query = dict(httpx.URL(url).params)
            flt = RunFilter.parse(query)
            if url.startswith("/runs/counts"):
                name = "status_counts"
                params: dict[str, Any] = {
                    "workflow": None, "queue": None, "finished_since": now - _hour(),
                }  # fmt: skip
            else:
                name, params = "runs_older", flt.sql(now, 51)
            plan = [
                r[0]
                for r in conn.execute(
                    "explain (analyze, costs off) " + QUERIES[name],  # type: ignore[operator]
                    params,
                )
            ]
            seq = any("Seq Scan on runs" in line for line in plan)
            scans = sorted(
                {
                    line.strip().split(" on ")[0].lstrip("-> ").strip()
                    + " on "
                    + line.split(" on ")[1].split()[0]
                    for line in plan
                    if " on " in line and "Scan" in line
                }
            )
            total = next((line for line in plan if line.startswith("Execution Time")), "")
            found[label] = (
                f"{'SEQ SCAN of runs' if seq else 'indexes only'}; {total}; " + ", ".join(scans)
            )
    return found


def _hour() -> Any:
    from datetime import timedelta

    return timedelta(hours=1)


def report(title: str, medians: dict[str, float], plans: dict[str, str]) -> None:
    print(f"\n{title}")
    for label, ms in medians.items():
        print(f"  {label:34s} median {ms:8.1f} ms   [{plans[label]}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument(
        "--try-index", action="store_true", help="then add (created_at, id) and time again"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (for EXPLAINs)")
    parser.add_argument("--reuse", metavar="DBNAME", help="time a database kept by --keep")
    args = parser.parse_args(argv)
    name = args.reuse or f"pgdurable_bench_dash_{uuid.uuid4().hex[:10]}"
    if not name.startswith("pgdurable_bench_dash_"):
        parser.error("--reuse takes a database this script made (pgdurable_bench_dash_...)")
    dsn = _db(args.dsn, name)
    if not args.reuse:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'create database "{name}"')
    try:
        if not args.reuse:
            print(f"filling {name} with {args.runs:,} runs")
            fill(dsn, args.runs)
        else:
            with psycopg.connect(dsn, autocommit=True) as conn:
                init_schema(conn)  # this checkout's schema may be newer than the kept one's
        urls = pages(dsn)
        report(
            f"runs page, {args.runs:,} runs, schema indexes only",
            asyncio.run(time_pages(dsn, urls)),
            explain(dsn, urls),
        )
        if args.try_index:
            with psycopg.connect(dsn, autocommit=True) as conn:
                t0 = time.perf_counter()
                conn.execute("drop index if exists pgdurable.runs_created_idx")
                conn.execute(INDEX)
                conn.execute("analyze pgdurable.runs")
                print(f"\n{INDEX}: {time.perf_counter() - t0:.1f} s")
            report(
                f"runs page, {args.runs:,} runs, with runs (created_at, id)",
                asyncio.run(time_pages(dsn, urls)),
                explain(dsn, urls),
            )
    finally:
        if args.keep:
            print(f"\nkept {name}: --reuse {name}, then drop it with: dropdb {name}")
        else:
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute(f'drop database if exists "{name}" with (force)')
            print(f"\ndropped {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
