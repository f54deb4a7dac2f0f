"""Scale figures for docs/scaling.md: ``python -m bench.scale --dsn DSN [--finished 10000000]``.

Four parts, each in scratch databases this script creates and drops (``--only A,B,C,N``):

A. Claim cost against a big history. Two databases get the same 100,000 pending runs; one also
   gets ``--finished`` completed runs (default 10,000,000) with one checkpoint each, inserted
   set-based (one ``INSERT ... SELECT FROM generate_series`` per table) before the pending
   runs, then ``VACUUM ANALYZE``. One connection per database claims one run at a time with the
   prepared ``claim_runs`` the SDK sends, alternating between the two (the order swapped every
   pair); each claimed run is then completed (timed apart), so no running runs pile up.
   Figures: p50 and p95 per claim on each side and their ratio; shared buffers per claim from
   ``EXPLAIN (ANALYZE, BUFFERS)`` of ``claim_runs`` (nested statements included).
B. W2 (2,000 three-step workflows started with ``start_many``) executed by 1, 2, 4 and 8
   ``python -m bench.worker`` processes of ``--concurrency`` slots each, in the order
   1 2 4 8 8 4 2 1 (medians of the two rounds), each round bracketed by the INSERT+COMMIT
   floor. Workflows/s from the runs' own timestamps, as in bench W2; CPU per workflow of the
   PostgreSQL backends serving the workers and of the worker processes, from /proc (the
   server must run on this host; otherwise those figures are left out).
C. Capacity-model inputs, over N workflows each: what 0-step, 1-step and 3-step workflows cost
   once started (executed by 2 worker processes), and what single and batched starts cost.
   Commits: ``pg_stat_database.xact_commit`` of the scratch database (read-only transactions
   count there too) and, when pg_walinspect is available, the COMMIT records of transactions
   that wrote to it. WAL: ``pg_wal_lsn_diff`` across the window (server-wide: other databases'
   writes land in it, so an idle window of the same length is measured too) and, with
   pg_walinspect, the bytes of the records of this database's transactions alone. Rows:
   ``pg_stat_user_tables`` inserts, updates and deletes per table.
N. Commits/s of 1 and 8 connections looping a one-row INSERT in autocommit, with and without a
   NOTIFY in the transaction (3 s each, alternating, 3 rounds, medians): PostgreSQL serializes
   the commits of transactions that NOTIFY (one server-wide lock, held through the WAL flush),
   and start_run and complete_run both NOTIFY.

Prints one JSON line per figure, then a markdown table; writes scale.jsonl and scale.md to
--out. No figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import (
    Report,
    floor_insert_commit,
    floor_select1,
    percentile,
    server_settings,
    with_db,
    workers,
)

WORKFLOW = "bench_scale"
CLAIM = "select * from pgdurable.claim_runs(%s, %s, 1, 30, %s)"
EXPLAIN_CLAIM = "explain (analyze, buffers, wal, format json) " + CLAIM
COMPLETE = "select pgdurable.complete_run(%s, %s, %s)"
START_RUN = "select pgdurable.start_run(%s, %s, %s)"
START_RUNS = "select id from pgdurable.start_runs(%s, %s::jsonb[], %s, %s::text[]) as id"
DONE = "select count(*) from pgdurable.runs where queue_name = %s and status = 'completed'"
APP_NAME = "bench-scale-worker"
TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def scratch_db(server: str, tag: str) -> Iterator[str]:
    """A fresh database with the pgdurable schema and the floor table; dropped at the end."""
    from pgdurable._schema import init_schema

    name = f"bench_scale_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    dsn = with_db(server, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn)
            conn.execute(
                "create table bench_floor (id bigint generated always as identity"
                " primary key, v text not null)"
            )
            conn.execute(
                "create table bench_app (id bigint generated always as identity"
                " primary key, i integer not null)"
            )
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def insert_commit_floor(dsn: str, n: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return floor_insert_commit(conn, n)


# --- A: claims over a big history ---------------------------------------------------------------


def add_finished(conn: psycopg.Connection[Any], n: int) -> dict[str, float]:
    """n completed runs of WORKFLOW spread over the last 28 days, then one checkpoint each.
    Returns the seconds each statement took."""
    took: dict[str, float] = {}
    t0 = time.perf_counter()
    conn.execute(
        """
        insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input,
            output, attempt, available_at, created_at, started_at, updated_at, finished_at)
        select gen_random_uuid(), 'done-' || lpad(g::text, 10, '0'), %(wf)s, 'scale',
               'completed', jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb),
               to_jsonb(g), 1, t.at, t.at, t.at, t.at + interval '1 second',
               t.at + interval '1 second'
          from generate_series(1, %(n)s) g
         cross join lateral (select pgdurable.now() - interval '28 days'
                                    + (interval '27 days') * g / %(n)s as at) t
        """,
        {"wf": WORKFLOW, "n": n},
    )
    took["insert_runs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # ordered by run id so the primary key is built left to right instead of at random
    conn.execute(
        """
        insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,
            run_attempt, started_at, completed_at)
        select id, 'noop', 0, 'step', 'noop', 'null', 1, started_at, finished_at
          from pgdurable.runs where status = 'completed' order by id
        """
    )
    took["insert_checkpoints_s"] = time.perf_counter() - t0
    return took


def add_pending(conn: psycopg.Connection[Any], n: int) -> None:
    conn.execute(
        """
        insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input,
            attempt, available_at, created_at, updated_at)
        select gen_random_uuid(), 'pending-' || g, %(wf)s, 'scale', 'pending',
               jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb), 0,
               t.at, t.at, t.at
          from generate_series(1, %(n)s) g
         cross join lateral (select pgdurable.now() - interval '1 hour'
                                    + g * interval '1 millisecond' as at) t
        """,
        {"wf": WORKFLOW, "n": n},
    )


def claim_params(worker: str = "w") -> tuple[Any, ...]:
    return (worker, ["scale"], [WORKFLOW])


def alternate(
    conns: dict[str, psycopg.Connection[Any]], claims: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Latency (us) of ``claims`` one-run claims per side, alternating, and of the complete
    that follows each claim (timed apart: the claim figures exclude it)."""
    sides = list(conns)
    lat: dict[str, list[float]] = {s: [] for s in sides}
    done: dict[str, list[float]] = {s: [] for s in sides}
    out = Jsonb(None)
    for i in range(claims):
        for side in sides if i % 2 == 0 else sides[::-1]:
            c = conns[side]
            t0 = time.perf_counter()
            rows = c.execute(CLAIM, claim_params(), prepare=True).fetchall()
            lat[side].append((time.perf_counter() - t0) * 1e6)
            if len(rows) != 1:
                raise RuntimeError(f"a claim on the {side} side returned {len(rows)} runs")
            t0 = time.perf_counter()
            c.execute(COMPLETE, (rows[0][0], rows[0][5], out), prepare=True)
            done[side].append((time.perf_counter() - t0) * 1e6)
    return lat, done


def claim_buffers(conn: psycopg.Connection[Any], reps: int) -> dict[str, float]:
    """Median shared buffers and WAL bytes of one claim (EXPLAIN of claim_runs: its function
    scan counts every statement run inside it); each claimed run is completed."""
    got: dict[str, list[float]] = {"hit": [], "read": [], "dirtied": [], "wal_bytes": []}
    out = Jsonb(None)
    for _ in range(reps):
        plan = conn.execute(EXPLAIN_CLAIM, claim_params("w-explain"), prepare=True).fetchone()
        node = plan[0][0]["Plan"]  # type: ignore[index]
        got["hit"].append(node["Shared Hit Blocks"])
        got["read"].append(node["Shared Read Blocks"])
        got["dirtied"].append(node["Shared Dirtied Blocks"])
        got["wal_bytes"].append(node.get("WAL Bytes", 0))
        for run_id, attempt in conn.execute(
            "select id, attempt from pgdurable.runs"
            " where worker_id = 'w-explain' and status = 'running'"
        ).fetchall():
            conn.execute(COMPLETE, (run_id, attempt, out), prepare=True)
    return {k: statistics.median(v) for k, v in got.items()}


def sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rels = ("runs", "runs_pkey", "runs_claim_idx", "checkpoints", "checkpoints_pkey")
    return {
        rel: conn.execute(
            "select pg_relation_size(%s::regclass)", (f"pgdurable.{rel}",)
        ).fetchone()[0]  # type: ignore[index]
        for rel in rels
    }


def part_a(server: str, args: argparse.Namespace, report: Report) -> None:
    with scratch_db(server, "big") as big, scratch_db(server, "empty") as empty:
        load: dict[str, float] = {}
        with psycopg.connect(big, autocommit=True) as conn:
            conn.execute("set maintenance_work_mem = '256MB'")
            if args.finished > 0:
                load = add_finished(conn, args.finished)
            add_pending(conn, args.pending)
            t0 = time.perf_counter()
            conn.execute("vacuum analyze pgdurable.runs")
            conn.execute("vacuum analyze pgdurable.checkpoints")
            load["vacuum_analyze_s"] = time.perf_counter() - t0
            big_sizes = sizes(conn)
        with psycopg.connect(empty, autocommit=True) as conn:
            add_pending(conn, args.pending)
            conn.execute("vacuum analyze pgdurable.runs")
            conn.execute("vacuum analyze pgdurable.checkpoints")
            empty_sizes = sizes(conn)
        fl = insert_commit_floor(empty, 1000)
        with (
            psycopg.connect(big, autocommit=True) as cb,
            psycopg.connect(empty, autocommit=True) as ce,
        ):
            conns = {"big": cb, "empty": ce}
            alternate(conns, 20)  # warm: prepared statements, PL/pgSQL plans, the cache
            lat, done = alternate(conns, args.claims)
            bufs = {side: claim_buffers(c, args.explain) for side, c in conns.items()}
        fl = statistics.median([fl, insert_commit_floor(empty, 1000)])

    common = {
        "finished": args.finished,
        "pending": args.pending,
        "claims": args.claims,
        "insert_commit_floor_us": round(fl, 1),
        **{k: round(v, 1) for k, v in load.items()},
    }
    p50 = {s: statistics.median(v) for s, v in lat.items()}
    p95 = {s: percentile(v, 95) for s, v in lat.items()}
    report.figure(
        "A",
        "claim_p50_empty",
        p50["empty"],
        "us",
        ratio=p50["empty"] / fl,
        ratio_to="insert_commit",
        **common,
    )
    report.figure(
        "A",
        f"claim_p50_{args.finished}_finished",
        p50["big"],
        "us",
        ratio=p50["big"] / p50["empty"],
        ratio_to="claim_p50_empty",
        goal="<= 1.2x",
        met=p50["big"] / p50["empty"] <= 1.2,
    )
    report.figure(
        "A",
        "claim_p95_empty",
        p95["empty"],
        "us",
        ratio=p95["empty"] / fl,
        ratio_to="insert_commit",
    )
    report.figure(
        "A",
        f"claim_p95_{args.finished}_finished",
        p95["big"],
        "us",
        ratio=p95["big"] / p95["empty"],
        ratio_to="claim_p95_empty",
    )
    c50 = {s: statistics.median(v) for s, v in done.items()}
    report.figure(
        "A",
        f"complete_p50_{args.finished}_finished",
        c50["big"],
        "us",
        ratio=c50["big"] / c50["empty"],
        ratio_to="complete_p50_empty",
        empty_us=round(c50["empty"], 1),
    )
    for side in ("empty", "big"):
        b = bufs[side]
        report.figure(
            "A",
            f"buffers_per_claim_{side}",
            b["hit"] + b["read"],
            "buffers/claim",
            ratio=(b["hit"] + b["read"]) / (bufs["empty"]["hit"] + bufs["empty"]["read"]),
            ratio_to="buffers_per_claim_empty",
            shared_read=b["read"],
            shared_dirtied=b["dirtied"],
            wal_bytes_per_claim=b["wal_bytes"],
            explain_reps=args.explain,
            relation_bytes=big_sizes if side == "big" else empty_sizes,
        )


# --- B: W2 across worker processes ----------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    rows = conn.execute(
        "select pid from pg_stat_activity where application_name = %s", (APP_NAME,)
    ).fetchall()
    return [r[0] for r in rows]


def server_is_local(conn: psycopg.Connection[Any]) -> bool:
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "postgres"
    except OSError:
        return False


def w2_round(dsn: str, b: Any, queue: str, procs: int, slots: int, n: int) -> dict[str, Any]:
    """W2 on ``queue`` by ``procs`` worker processes: wf/s and CPU per workflow."""
    extra = ("--application-name", APP_NAME)
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        workers(dsn, queue, procs, slots, extra) as pids,
    ):
        local = server_is_local(conn)
        time.sleep(0.5)  # the workers' pools and listeners connect
        before_pg = {p: cpu_ticks(p) for p in backend_pids(conn)} if local else {}
        before_w = {p: cpu_ticks(p) for p in pids}
        for lo in range(0, n, 5000):
            b.w2.start_many([(i,) for i in range(lo, min(n, lo + 5000))], queue=queue)
        deadline = time.monotonic() + 900
        while True:
            done = conn.execute(
                DONE,
                (queue,),
            ).fetchone()[0]  # type: ignore[index]
            if done >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} workflows of {queue!r} completed")
            time.sleep(0.05)
        pg_ticks = (
            sum(cpu_ticks(p) - before_pg.get(p, 0) for p in backend_pids(conn)) if local else None
        )
        w_ticks = sum(cpu_ticks(p) - before_w[p] for p in pids)
        secs = conn.execute(
            "select extract(epoch from max(finished_at) - min(started_at))::float8"
            " from pgdurable.runs where queue_name = %s",
            (queue,),
        ).fetchone()[0]  # type: ignore[index]
    return {
        "wfs": n / secs,
        "secs": secs,
        "pg_cpu_us_per_wf": None if pg_ticks is None else pg_ticks / TICK * 1e6 / n,
        "worker_cpu_us_per_wf": w_ticks / TICK * 1e6 / n,
    }


def part_b(server: str, args: argparse.Namespace, report: Report) -> None:
    from bench.apps import build

    levels = [int(x) for x in args.processes.split(",")]
    order = levels + levels[::-1]
    got: dict[int, list[dict[str, Any]]] = {p: [] for p in levels}
    floors: list[float] = []
    with scratch_db(server, "w2") as dsn:
        b = build(dsn)
        try:
            for i, procs in enumerate(order):
                floors.append(insert_commit_floor(dsn, 1000))
                res = w2_round(dsn, b, f"w2s-{procs}-{i}", procs, args.concurrency, args.workflows)
                got[procs].append(res)
                print(f"# W2 {procs} processes: {res['wfs']:.0f} wf/s", file=sys.stderr)
            floors.append(insert_commit_floor(dsn, 1000))
        finally:
            b.app.close()
    fl = statistics.median(floors)
    base = statistics.median(r["wfs"] for r in got[levels[0]])
    for procs in levels:
        rs = got[procs]
        wfs = statistics.median(r["wfs"] for r in rs)
        pg = [r["pg_cpu_us_per_wf"] for r in rs if r["pg_cpu_us_per_wf"] is not None]
        pg_us = statistics.median(pg) if pg else None
        report.figure(
            "B",
            f"w2_workflows_per_s_{procs}_processes",
            wfs,
            "wf/s",
            ratio=(1e6 / wfs) / fl,
            ratio_to="insert_commit (us per workflow)",
            us_per_workflow=round(1e6 / wfs, 1),
            speedup=round(wfs / base, 2),
            each=[round(r["wfs"], 1) for r in rs],
            slots=procs * args.concurrency,
            workflows=args.workflows,
            pg_cpu_us_per_wf=None if pg_us is None else round(pg_us, 1),
            pg_wf_per_core_s=None if not pg_us else round(1e6 / pg_us, 1),
            worker_cpu_us_per_wf=round(statistics.median(r["worker_cpu_us_per_wf"] for r in rs), 1),
            insert_commit_floor_us=round(fl, 1),
            floors_us=[round(x, 1) for x in floors],
        )


# --- C: capacity-model inputs ---------------------------------------------------------------------


class Window:
    """Counters of one database across a window: commits, rows per table, WAL (server-wide LSN
    and, with pg_walinspect, the records of this database's transactions)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.dboid = conn.execute(
                "select oid from pg_database where datname = current_database()"
            ).fetchone()[0]  # type: ignore[index]
            try:
                conn.execute("create extension if not exists pg_walinspect")
                self.walinspect = True
            except psycopg.Error:
                self.walinspect = False

    def read(self) -> dict[str, Any]:
        """One reading on a connection of its own (its own read commits once: subtract 1)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            lsn, commits = conn.execute(
                "select pg_current_wal_insert_lsn(), xact_commit from pg_stat_database"
                " where datname = current_database()"
            ).fetchone()  # type: ignore[misc]
            rows = {
                r[0]: (r[1], r[2], r[3], r[4])
                for r in conn.execute(
                    "select relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd"
                    " from pg_stat_user_tables where schemaname = 'pgdurable'"
                ).fetchall()
            }
        return {"lsn": lsn, "commits": commits, "rows": rows, "t": time.monotonic()}

    def delta(self, a: dict[str, Any], b: dict[str, Any], polls: int) -> dict[str, Any]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            wal = conn.execute("select pg_wal_lsn_diff(%s, %s)::bigint", (b["lsn"], a["lsn"]))
            out: dict[str, Any] = {
                "wal_bytes_server": wal.fetchone()[0],  # type: ignore[index]
                "commits": b["commits"] - a["commits"] - 1 - polls,
                "seconds": b["t"] - a["t"],
            }
            ins = upd = dele = hot = 0
            per_table: dict[str, list[int]] = {}
            for rel, (i1, u1, d1, h1) in b["rows"].items():
                i0, u0, d0, h0 = a["rows"].get(rel, (0, 0, 0, 0))
                d = [i1 - i0, u1 - u0, d1 - d0, h1 - h0]
                if any(d[:3]):
                    per_table[rel] = d
                ins, upd, dele, hot = ins + d[0], upd + d[1], dele + d[2], hot + d[3]
            out.update(rows_ins=ins, rows_upd=upd, rows_del=dele, rows_hot_upd=hot)
            out["per_table_ins_upd_del_hot"] = per_table
            if self.walinspect:
                # pg_walinspect reads only flushed WAL: wait for the window's end to be flushed
                for _ in range(100):
                    q = "select pg_current_wal_flush_lsn() >= %s::pg_lsn"
                    if conn.execute(q, (b["lsn"],)).fetchone()[0]:  # type: ignore[index]
                        break
                    time.sleep(0.05)
                rec = conn.execute(
                    r"""
                    with r as (
                        select xid, resource_manager, record_type, record_length, fpi_length,
                               block_ref ~ (' rel \d+/' || %(db)s || '/') as here
                          from pg_get_wal_records_info(%(a)s, %(b)s)),
                    mine as (select distinct xid from r where here and xid <> '0')
                    select count(*), coalesce(sum(record_length), 0), coalesce(sum(fpi_length), 0),
                           count(*) filter (where resource_manager = 'Transaction'
                                              and record_type like 'COMMIT%%')
                      from r
                     where (xid in (select xid from mine)) or (xid = '0' and here)
                    """,
                    {"db": str(self.dboid), "a": a["lsn"], "b": b["lsn"]},
                ).fetchone()
                out.update(
                    wal_records=rec[0],  # type: ignore[index]
                    wal_bytes_db=rec[1],  # type: ignore[index]
                    wal_fpi_bytes_db=rec[2],  # type: ignore[index]
                    wal_bytes_db_without_fpi=rec[1] - rec[2],  # type: ignore[index]
                    write_commits=rec[3],  # type: ignore[index]
                )
        return out


def settle() -> None:
    """Backends flush their statistics when they exit; give the last ones time to land."""
    time.sleep(1.5)


def run_workers_window(
    w: Window, dsn: str, queue: str, n: int, procs: int, slots: int
) -> dict[str, Any]:
    a = w.read()
    polls = 0
    with workers(dsn, queue, procs, slots), psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 900
        while n:
            polls += 1
            done = conn.execute(
                DONE,
                (queue,),
            ).fetchone()[0]  # type: ignore[index]
            if done >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} workflows of {queue!r} completed")
            time.sleep(0.2)
        if not n:
            time.sleep(3.0)
    settle()
    return w.delta(a, w.read(), polls)


def start_window(w: Window, dsn: str, workflow: str, queue: str, n: int, batch: int) -> Any:
    """Starts n runs of ``workflow`` on ``queue``, one start_run each (batch 1) or start_runs of
    ``batch``, on a connection closed before the window ends; the window's counters."""
    inp = Jsonb({"args": [1], "kwargs": {}})
    options = Jsonb({"queue": queue})
    a = w.read()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(0, n, batch):
            k = min(n, lo + batch) - lo
            if batch == 1:
                conn.execute(START_RUN, (workflow, inp, options), prepare=True)
            else:
                conn.execute(START_RUNS, (workflow, [inp] * k, options, None))
    settle()
    return w.delta(a, w.read(), 0)


def part_c(server: str, args: argparse.Namespace, report: Report) -> None:
    n = args.workflows
    slots = args.concurrency
    results: dict[str, dict[str, Any]] = {}
    with scratch_db(server, "cap") as dsn, psycopg.connect(dsn, autocommit=True) as keeper:
        # a temporary slot (gone with this session) keeps the WAL of the windows readable by
        # pg_walinspect even if a checkpoint of the busy server would recycle it
        keeper.execute(
            "select pg_create_physical_replication_slot(%s, true, true)",
            (f"bench_scale_{uuid.uuid4().hex[:8]}",),
        )
        w = Window(dsn)
        a = w.read()
        time.sleep(5.0)
        results["idle_5s"] = w.delta(a, w.read(), 0)
        results["workers_idle"] = run_workers_window(w, dsn, "idle", 0, 2, slots)
        results["start_single"] = start_window(w, dsn, "bench_w4", "cap-s", n, 1)
        results["start_batched_1000"] = start_window(w, dsn, "bench_w4", "cap-b", n, 1000)
        for name, wf in (
            ("steps_0", "bench_w4"),
            ("steps_1", "bench_mem"),
            ("steps_3", "bench_w2"),
        ):
            start_window(w, dsn, wf, f"cap-{name}", n, 1000)
            results[name] = run_workers_window(w, dsn, f"cap-{name}", n, 2, slots)
    per = (
        "commits",
        "write_commits",
        "wal_bytes_server",
        "wal_bytes_db",
        "wal_fpi_bytes_db",
        "wal_bytes_db_without_fpi",
        "wal_records",
        "rows_ins",
        "rows_upd",
        "rows_del",
        "rows_hot_upd",
    )
    for name, d in results.items():
        count = n if name.startswith(("start", "steps")) else None
        unit_of = "per workflow" if name.startswith("steps") else "per start"
        extra: dict[str, Any] = {"n": count, **d}
        if count:
            extra.update({f"{k}_per": round(d[k] / count, 2) for k in per if d.get(k) is not None})
        value = d.get("wal_bytes_db", d["wal_bytes_server"])
        report.figure(
            "C",
            name,
            value / count if count else value,
            "WAL bytes " + (unit_of if count else "in the window"),
            **extra,
        )
    s0, s1, s3 = results["steps_0"], results["steps_1"], results["steps_3"]
    key = "wal_bytes_db" if "wal_bytes_db" in s1 else "wal_bytes_server"
    step: dict[str, Any] = {
        k: round((s3[k] - s1[k]) / (2 * n), 2)
        for k in ("commits", "write_commits", "wal_bytes_db_without_fpi", "rows_ins", "rows_upd")
        if k in s1
    }
    report.figure(
        "C",
        "wal_bytes_per_step",
        (s3[key] - s1[key]) / (2 * n),
        "WAL bytes per step",
        source=key,
        per_step=step,
        wal_bytes_claim_complete=round(s0[key] / n, 1),
    )


# --- N: commits that NOTIFY ---------------------------------------------------------------------

NOTIFY_INSERT = (
    "with i as (insert into bench_floor (v) values (%s) returning id)"
    " select pg_notify('bench_scale', i.id::text) from i"
)


def commit_rate(dsn: str, threads: int, notify: bool, seconds: float) -> float:
    """Commits/s of ``threads`` connections each looping a one-row INSERT in autocommit, with a
    NOTIFY in the same transaction or without (start_run and complete_run both NOTIFY)."""
    import threading

    counts = [0] * threads
    stop = threading.Event()
    query = NOTIFY_INSERT if notify else "insert into bench_floor (v) values (%s)"

    def loop(k: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(query, ("warm",), prepare=True)
            while not stop.is_set():
                conn.execute(query, ("x",), prepare=True)
                counts[k] += 1

    pool = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    time.sleep(0.5)
    before = sum(counts)
    time.sleep(seconds)
    done = sum(counts) - before
    stop.set()
    for t in pool:
        t.join()
    return done / seconds


def part_n(server: str, args: argparse.Namespace, report: Report) -> None:
    rates: dict[tuple[int, bool], list[float]] = {}
    with scratch_db(server, "notify") as dsn:
        for rep in range(3):
            for threads in (1, 8):
                for notify in (False, True) if rep % 2 == 0 else (True, False):
                    rate = commit_rate(dsn, threads, notify, 3.0)
                    rates.setdefault((threads, notify), []).append(rate)
    for threads in (1, 8):
        plain = statistics.median(rates[(threads, False)])
        with_notify = statistics.median(rates[(threads, True)])
        report.figure(
            "N",
            f"commits_per_s_{threads}_connections_with_notify",
            with_notify,
            "commits/s",
            ratio=with_notify / plain,
            ratio_to="same without NOTIFY",
            without_notify=round(plain, 1),
            each_with=[round(x) for x in rates[(threads, True)]],
            each_without=[round(x) for x in rates[(threads, False)]],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dsn", required=True, help="server to benchmark (a superuser)")
    parser.add_argument("--finished", type=int, default=10_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--explain", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker process")
    parser.add_argument("--only", default="A,B,C,N")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args(argv)
    parts = {p.strip().upper() for p in args.only.split(",")}
    if parts - {"A", "B", "C", "N"} or args.claims < 1 or args.pending < args.claims + 100:
        parser.error("--only takes A, B, C, N; --pending must exceed --claims by 100 or more")
    report = Report()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        meta = {
            "workload": "meta",
            "cpus": os.cpu_count(),
            "postgres": server_settings(conn),
            "select1_us": round(floor_select1(conn, 200), 1),
            "loadavg": os.getloadavg(),
            "args": vars(args),
        }
    print(json.dumps(meta), flush=True)
    for part, fn in (("A", part_a), ("B", part_b), ("C", part_c), ("N", part_n)):
        if part in parts:
            t0 = time.perf_counter()
            try:
                fn(args.dsn, args, report)
            except Exception as exc:
                report.failed(part, exc)
            print(f"# part {part}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    meta["loadavg_end"] = os.getloadavg()
    table = report.markdown()
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.jsonl").write_text(
        "\n".join(json.dumps(r, default=str) for r in [meta, *report.rows]) + "\n"
    )
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    (out / "scale.md").write_text(f"Command: python -m bench.scale {cmd}\n\n{table}\n")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
