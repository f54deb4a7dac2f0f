"""Does deleting expired runs slow down claims? Claim latency before, during and after a purge.

    python bench/retention_claims.py --dsn postgresql://postgres@127.0.0.1:5432/postgres
    python bench/retention_claims.py --finished 100000 --pending 20000   # a quicker run
    python bench/retention_claims.py --explain --async-commit            # diagnostics
    python bench/retention_claims.py --batches 1000 --purge-pause-ms 1000 --claim-every-ms 20
                                                  # the workers' own pace: ~17 minutes for 1M

For each purge batch size (--batches, default 1000 then 10000), in a scratch database of its
own (created on the server of --dsn, dropped at the end, also on failure):

1. fill, one set-based INSERT ... SELECT generate_series each: --finished completed runs that
   finished 40 to 50 days ago (expired: retention is 30 days), --recent ones that finished in
   the last 29 days (kept; none by default), two checkpoints each, and --pending pending runs
   of workflow 'wf' on queue 'q', due an hour ago; VACUUM ANALYZE and CHECKPOINT, so the
   fill's own writes are not measured;
2. baseline: --claims claims of one run each (a prepared pgdurable.claim_runs on one autocommit
   connection) with nothing else running; each claimed run is then completed (untimed);
3. during: a second process calls `select pgdurable.purge_expired(batch)` until it returns 0
   (back to back, or --purge-pause-ms apart) while this one keeps claiming;
4. after: --claims claims again, right after the purge.

A third process samples pg_stat_activity every 50 ms throughout. Claims are paced (one every
--claim-every-ms at most, so they cannot run out of pending runs) and each must return a run.
The claimed runs are completed as a worker would: left running (--leave-running), they pile up
and every claim gets slower with them, purge or not (tick_due's min(lease_expires_at) is
planned as a scan of every running run when the statistics saw none running). Their
lease is --lease seconds (an hour), so none expires and makes claims recover it instead.

How to read it. "during/baseline" divides each percentile (median, p95, p99) of the claims made
while the purge ran by the baseline's; issue 9's goal is at most 1.2x. With --purge-pause-ms,
the claims made during the purge are also split into those that overlapped a batch and those
between batches: the latter are an interleaved baseline that drifting load from other
databases on the server cannot skew. The purge line gives its time, runs deleted per second,
batch times (first and last tenth: later batches that take longer are scanning dead entries)
and the WAL the server wrote meanwhile (all databases). "waits" is the share of samples in which
a backend was in each wait event (CPU: active with none), per phase for the claims' backend: it
says where a slower claim spent its time. "other active backends" is the load from other
databases on the same server: noise. --async-commit runs the claims with synchronous_commit off,
which removes their WAL flush and so shows how much of a slowdown is the flush. --explain prints
the plans (ANALYZE, BUFFERS, WAL, through auto_explain) of the first and the middle purge batch.
"the last call (nothing left)" is what every later call costs (workers make one a minute): with
--recent, it reads every kept finished run. Expired runs left must be 0.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgdurable._schema import init_schema

DB_PREFIX = "pgdurable_bench_retention_"
PHASES = ("baseline", "during", "after")
SAMPLE_EVERY = 0.05
CLAIM = "select * from pgdurable.claim_runs('bench-worker', array['q'], 1, %s, array['wf'])"
COMPLETE = "select pgdurable.complete_run(%s, %s, '\"done\"')"
PURGE = "select pgdurable.purge_expired(%s)"
EXPLAIN_SETTINGS = (
    "set auto_explain.log_analyze = on",
    "set auto_explain.log_buffers = on",
    "set auto_explain.log_wal = on",
    "set auto_explain.log_nested_statements = on",
    "set auto_explain.log_level = notice",
)
EXPLAIN_ON = "set auto_explain.log_min_duration = 0"
EXPLAIN_OFF = "set auto_explain.log_min_duration = -1"

EMPTY = """
truncate pgdurable.runs, pgdurable.checkpoints, pgdurable.timers, pgdurable.messages,
         pgdurable.streams
"""
# Finished 40 to 50 days ago (expired) or, with %(recent)s, 1 to 29 days ago (kept): oldest
# first in the table, as a long-lived system's history is.
FINISHED = """
insert into pgdurable.runs (
    id, workflow_id, workflow_name, queue_name, status, input, output, attempt, worker_id,
    available_at, created_at, started_at, updated_at, finished_at)
select gen_random_uuid(), %(prefix)s || g, 'wf', 'q', 'completed',
       jsonb_build_object('args', jsonb_build_array('order-' || g, g %% 997),
                          'kwargs', '{}'::jsonb),
       jsonb_build_object('charged', g %% 997), 1, 'bench-worker',
       t.at, t.at, t.at + interval '1 second', t.at + interval '5 seconds',
       t.at + interval '5 seconds'
  from generate_series(1, %(n)s) g
 cross join lateral (
     select case when %(recent)s then now() - interval '29 days'
                                       + make_interval(secs => g * 2419200.0 / %(n)s)
                 else now() - interval '50 days'
                      + make_interval(secs => g * 864000.0 / %(n)s) end as at) t
"""
CHECKPOINTS = """
insert into pgdurable.checkpoints (
    run_id, step_key, seq, kind, step_name, output, run_attempt, started_at, completed_at)
select r.id, k.key, k.seq, 'step', k.key, '"ok"', 1, r.started_at,
       r.started_at + make_interval(secs => 1 + k.seq)
  from pgdurable.runs r
 cross join (values (0, 'reserve'), (1, 'charge')) k(seq, key)
 where r.status = 'completed'
"""
# Due between two hours and one hour ago, in the order claims take them.
PENDING = """
insert into pgdurable.runs (
    id, workflow_id, workflow_name, queue_name, status, input, available_at, created_at,
    updated_at)
select gen_random_uuid(), 'todo-' || g, 'wf', 'q', 'pending',
       jsonb_build_object('args', jsonb_build_array('order-' || g, g %% 997),
                          'kwargs', '{}'::jsonb),
       t.at, t.at, t.at
  from generate_series(1, %(n)s) g
 cross join lateral (
     select now() - interval '2 hours' + make_interval(secs => g * 3600.0 / %(n)s) as at) t
"""
EXPIRED_LEFT = """
select count(*) from pgdurable.runs r, pgdurable.settings s
 where s.id and r.finished_at < pgdurable.now() - s.retention
"""
# n_dead_tup only: n_live_tup lags behind a bulk fill followed at once by VACUUM.
TABLE_STATS = """
select relname, n_dead_tup, autovacuum_count, pg_total_relation_size(relid)
  from pg_stat_user_tables
 where schemaname = 'pgdurable' and relname in ('runs', 'checkpoints')
 order by relname
"""
INDEX_SIZES = """
select indexrelname, pg_relation_size(indexrelid)
  from pg_stat_user_indexes
 where schemaname = 'pgdurable' and relname = 'runs' and pg_relation_size(indexrelid) > 1048576
 order by 2 desc
"""
# Who waits on what: this database's backends and the server's own background processes.
ACTIVITY = """
select coalesce(nullif(application_name, ''), backend_type), datname = current_database(),
       coalesce(wait_event_type || ':' || wait_event, 'CPU')
  from pg_stat_activity
 where pid <> pg_backend_pid() and state is distinct from 'idle'
   and (datname is not null or backend_type in ('autovacuum worker', 'checkpointer',
                                                'walwriter', 'background writer'))
"""
SERVER_PROCESSES = ("autovacuum worker", "checkpointer", "walwriter", "background writer")


@dataclass(frozen=True)
class Options:
    dsn: str
    finished: int
    recent: int
    pending: int
    claims: int
    every: float
    lease: float
    pause: float
    explain: bool
    async_commit: bool
    complete: bool


@dataclass(frozen=True)
class Latencies:
    """Milliseconds of each claim of one phase."""

    phase: str
    ms: list[float]

    def summary(self) -> tuple[float, float, float]:
        """Median, p95, p99."""
        if len(self.ms) < 2:
            one = self.ms[0] if self.ms else float("nan")
            return one, one, one
        cuts = statistics.quantiles(self.ms, n=100, method="inclusive")
        return statistics.median(self.ms), cuts[94], cuts[98]


@dataclass(frozen=True)
class Purge:
    """What the purging process reports."""

    batches: list[tuple[int, float]]  # (runs deleted, seconds) per call, the last one 0
    seconds: float
    wal_bytes: int  # written by the whole server meanwhile
    plans: list[str]

    @property
    def deleted(self) -> int:
        return sum(n for n, _ in self.batches)


@dataclass
class Waits:
    """pg_stat_activity samples: counts per (phase, backend, wait event), samples per phase."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    samples: Counter[str] = field(default_factory=Counter)
    others: Counter[str] = field(default_factory=Counter)


@dataclass
class Children:
    """The sampler (whole scenario) and the purger (during), with what they share."""

    ctx: SpawnContext
    phase: Synchronized[int]
    batch_edges: Synchronized[int]  # purge calls started + ended: odd while one runs
    stop: Event
    waits_in: Pipe
    sampler: SpawnProcess | None = None
    purger: SpawnProcess | None = None


def with_db(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


# --- setup --------------------------------------------------------------------------------------


def install(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        init_schema(conn)
        # not needed by the fill (it writes past timestamps); lets a kept copy move engine time
        conn.execute("update pgdurable.settings set allow_clock_shift = true where id")


def fill(dsn: str, opts: Options) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EMPTY)
        expired = {"n": opts.finished, "recent": False, "prefix": "expired-"}
        kept = {"n": opts.recent, "recent": True, "prefix": "kept-"}
        steps: list[tuple[str, str, dict[str, Any] | None]] = [
            ("expired finished runs", FINISHED, expired),
            ("recent finished runs (kept)", FINISHED, kept),
            ("checkpoints", CHECKPOINTS, None),
            ("pending runs", PENDING, {"n": opts.pending}),
        ]
        for label, query, params in steps:
            if params is not None and params["n"] == 0:
                continue
            t0 = time.perf_counter()
            rows = conn.execute(query, params).rowcount
            print(f"  inserted {rows:,} {label} in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        conn.execute("vacuum analyze pgdurable.runs, pgdurable.checkpoints")
        conn.execute("checkpoint")
        print(f"  vacuum analyze + checkpoint in {time.perf_counter() - t0:.1f} s", flush=True)


# --- the claimer (this process) -----------------------------------------------------------------


def claim_loop(
    conn: psycopg.Connection[Any],
    opts: Options,
    done: Callable[[int], bool],
    edges: Synchronized[int] | None = None,
) -> tuple[list[float], list[bool]]:
    """Claims until done(claims so far): each claim's milliseconds, and whether a purge call
    ran during it (edges, odd while one runs)."""
    took: list[float] = []
    overlapped: list[bool] = []
    while not done(len(took)):
        t0 = time.perf_counter()
        before = edges.value if edges is not None else 0
        took.append(claim_one(conn, opts, len(took)))
        after = edges.value if edges is not None else 0
        overlapped.append(before != after or before % 2 == 1)
        rest = opts.every - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    return took, overlapped


def claim_one(conn: psycopg.Connection[Any], opts: Options, so_far: int) -> float:
    """Claims one run and returns how long that took (ms); then completes the run, untimed, as
    a worker would (unless opts.complete is False)."""
    t0 = time.perf_counter()
    rows = conn.execute(CLAIM, (opts.lease,), prepare=True).fetchall()
    took = (time.perf_counter() - t0) * 1000
    if len(rows) != 1:
        raise RuntimeError(
            f"a claim returned {len(rows)} runs after {so_far} claims: the pending runs ran "
            "out; give more --pending or a larger --claim-every-ms"
        )
    if opts.complete:
        run_id, attempt = rows[0][0], rows[0][5]
        conn.execute(COMPLETE, (run_id, attempt), prepare=True)
    return took


def claimer(dsn: str, opts: Options) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True, application_name="bench-claims")
    if opts.async_commit:
        conn.execute("set synchronous_commit = off")
    claim_loop(conn, opts, lambda n: n >= 50)  # warm up: plans, caches
    return conn


# --- the purger and the sampler (child processes) -----------------------------------------------


def purge_all(
    dsn: str, batch: int, pause: float, explain_at: list[int], edges: Synchronized[int], out: Pipe
) -> None:
    """Calls purge_expired(batch) until it returns 0; sends batches, seconds, WAL and plans."""
    plans: list[str] = []
    with psycopg.connect(dsn, autocommit=True, application_name="bench-purge") as conn:
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        if explain_at:
            conn.execute("load 'auto_explain'")
            for setting in EXPLAIN_SETTINGS:
                conn.execute(setting)
        lsn = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        batches: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        while not batches or batches[-1][0] > 0:
            if explain_at:
                conn.execute(EXPLAIN_ON if len(batches) in explain_at else EXPLAIN_OFF)
            batches.append(purge_once(conn, batch, edges))
            if pause:
                time.sleep(pause)
        seconds = time.perf_counter() - t0
        wal = conn.execute("select pg_current_wal_lsn() - %s::pg_lsn", (lsn,)).fetchone()
    out.send((batches, seconds, int(wal[0]), plans))  # type: ignore[index]


def purge_once(
    conn: psycopg.Connection[Any], batch: int, edges: Synchronized[int]
) -> tuple[int, float]:
    edges.value += 1
    t0 = time.perf_counter()
    n = conn.execute(PURGE, (batch,), prepare=True).fetchone()[0]  # type: ignore[index]
    spent = time.perf_counter() - t0
    edges.value += 1
    return int(n), spent


def sample_waits(dsn: str, phase: Synchronized[int], stop: Event, out: Pipe) -> None:
    """Counts (phase, backend, wait event) in pg_stat_activity every SAMPLE_EVERY s until stop."""
    waits = Waits()
    with psycopg.connect(dsn, autocommit=True, application_name="bench-sampler") as conn:
        while not stop.is_set():
            now = PHASES[phase.value]
            waits.samples[now] += 1
            for who, ours, wait in conn.execute(ACTIVITY, prepare=True):
                if ours or who in SERVER_PROCESSES:
                    waits.counts[(now, who, wait)] += 1
                else:
                    waits.others[now] += 1
            time.sleep(SAMPLE_EVERY)
    out.send((dict(waits.counts), dict(waits.samples), dict(waits.others)))  # plain types


# --- one scenario -------------------------------------------------------------------------------


def start_sampler(dsn: str) -> Children:
    ctx = mp.get_context("spawn")
    waits_in, waits_out = ctx.Pipe(duplex=False)
    kids = Children(ctx, ctx.Value("i", 0), ctx.Value("q", 0), ctx.Event(), waits_in)
    sampler = ctx.Process(
        target=sample_waits, args=(dsn, kids.phase, kids.stop, waits_out), daemon=True
    )
    sampler.start()
    kids.sampler = sampler
    return kids


def stop_children(kids: Children) -> None:
    kids.stop.set()
    for child in (kids.purger, kids.sampler):
        if child is not None and child.is_alive():
            child.join(5)
            if child.is_alive():
                child.terminate()
                child.join(5)


def during_purge(
    conn: psycopg.Connection[Any], kids: Children, opts: Options, dsn: str, batch: int
) -> tuple[list[float], list[bool], Purge]:
    """Claims while a child process purges every expired run in batches of `batch`."""
    purge_in, purge_out = kids.ctx.Pipe(duplex=False)
    middle = opts.finished // batch // 2
    explain_at = sorted({0, middle}) if opts.explain else []
    args = (dsn, batch, opts.pause, explain_at, kids.batch_edges, purge_out)
    purger = kids.purger = kids.ctx.Process(target=purge_all, args=args, daemon=True)
    kids.phase.value = PHASES.index("during")
    purger.start()
    while kids.batch_edges.value == 0 and purger.is_alive():
        time.sleep(0.001)  # claims start with the first batch
    took, overlapped = claim_loop(
        conn, opts, lambda _: purge_in.poll() or not purger.is_alive(), kids.batch_edges
    )
    if not purge_in.poll(10):
        raise RuntimeError(f"the purging process ended with exit code {purger.exitcode}")
    batches, seconds, wal, plans = purge_in.recv()
    purger.join(30)
    return took, overlapped, Purge(batches, seconds, wal, plans)


def scenario(dsn: str, opts: Options, batch: int) -> None:
    print(
        f"\n== purge batches of {batch:,}: {opts.finished:,} expired, {opts.recent:,} recent, "
        f"{opts.pending:,} pending"
    )
    fill(dsn, opts)
    kids = start_sampler(dsn)
    load = [os.getloadavg()[0]]
    try:
        with claimer(dsn, opts) as conn:
            base, _ = claim_loop(conn, opts, lambda n: n >= opts.claims)
            load.append(os.getloadavg()[0])
            during, overlapped, purge = during_purge(conn, kids, opts, dsn, batch)
            load.append(os.getloadavg()[0])
            kids.phase.value = PHASES.index("after")
            after, _ = claim_loop(conn, opts, lambda n: n >= opts.claims)
            load.append(os.getloadavg()[0])
            kids.stop.set()
            counts, samples, others = kids.waits_in.recv()
            waits = Waits(Counter(counts), Counter(samples), Counter(others))
            left = conn.execute(EXPIRED_LEFT).fetchone()[0]  # type: ignore[index]
            tables = conn.execute(TABLE_STATS).fetchall()
            indexes = conn.execute(INDEX_SIZES).fetchall()
    finally:
        stop_children(kids)
    phases = [Latencies("baseline", base), Latencies("during", during)]
    if opts.pause and not all(overlapped):
        phases.append(
            Latencies("  overlapping", [t for t, o in zip(during, overlapped, strict=True) if o])
        )
        phases.append(
            Latencies("  between", [t for t, o in zip(during, overlapped, strict=True) if not o])
        )
    phases.append(Latencies("after", after))
    report_claims(phases)
    report_purge(purge, batch)
    report_waits(waits)
    report_state(load, tables, indexes, left)


# --- reporting ----------------------------------------------------------------------------------


def report_claims(phases: list[Latencies]) -> None:
    print(f"  {'claims (ms)':22s} {'n':>7s} {'median':>8s} {'p95':>8s} {'p99':>8s}")
    for p in phases:
        median, p95, p99 = p.summary()
        print(f"  {p.phase:22s} {len(p.ms):7,d} {median:8.2f} {p95:8.2f} {p99:8.2f}")
    base = phases[0].summary()
    for p in phases[1:]:
        ratios = [x / b for x, b in zip(p.summary(), base, strict=True)]
        over = [name for name, r in zip(("median", "p95", "p99"), ratios, strict=True) if r > 1.2]
        verdict = "" if p.phase != "during" else f"over 1.2x: {', '.join(over)}" if over else "ok"
        label = f"{p.phase.strip()}/baseline"
        print(f"  {label:22s} {'':7s} " + " ".join(f"{r:7.2f}x" for r in ratios) + f"  {verdict}")


def report_purge(purge: Purge, batch: int) -> None:
    times = [s * 1000 for n, s in purge.batches if n > 0]
    rate = purge.deleted / purge.seconds if purge.seconds else float("nan")
    print(
        f"  purge: {purge.deleted:,} runs in {purge.seconds:.1f} s ({rate:,.0f} runs/s), "
        f"{len(times)} calls of {batch:,}; server WAL meanwhile {purge.wal_bytes / 2**20:,.0f} MB"
    )
    if times:
        tenth = max(1, len(times) // 10)
        print(
            f"  purge call ms: median {statistics.median(times):.0f}, max {max(times):.0f}; "
            f"first tenth median {statistics.median(times[:tenth]):.0f}, "
            f"last tenth median {statistics.median(times[-tenth:]):.0f}; "
            f"the last call (nothing left) {purge.batches[-1][1] * 1000:.0f}"
        )
    for plan in purge.plans:
        print("  | " + "\n  | ".join(plan_lines(plan)))


def plan_lines(plan: str) -> list[str]:
    """All of the purge's select; of every other statement its time, top node, buffers, WAL."""
    lines = plan.splitlines()
    if "array_agg(x.id)" in plan:
        return lines
    body = [line for line in lines[1:] if line and not line.startswith((" ", "Query Text"))]
    top = [line for line in lines if line.startswith(("  Buffers", "  WAL"))]
    return [lines[0] + "  " + (body[0] if body else ""), *top]


def report_waits(waits: Waits) -> None:
    def share(phase: str, who: str, wait: str) -> float:
        samples = waits.samples[phase]
        return waits.counts[(phase, who, wait)] / samples if samples else 0.0

    counted = ", ".join(f"{p} {waits.samples[p]}" for p in PHASES)
    print(f"  waits, share of samples (at least 1% in a phase; samples: {counted}):")
    print(f"    {'backend':18s} {'wait event':28s} " + " ".join(f"{p:>8s}" for p in PHASES))
    keys = sorted(
        {(who, wait) for _, who, wait in waits.counts},
        key=lambda k: (k[0], -waits.counts[("during", k[0], k[1])]),
    )
    for who, wait in keys:
        shares = [share(p, who, wait) for p in PHASES]
        if max(shares) >= 0.01:
            print(f"    {who:18s} {wait:28s} " + " ".join(f"{s:8.1%}" for s in shares))
    others = [waits.others[p] / waits.samples[p] if waits.samples[p] else 0 for p in PHASES]
    print(
        "    other active backends on the server (mean): "
        + ", ".join(f"{p} {o:.2f}" for p, o in zip(PHASES, others, strict=True))
    )


def report_state(load: list[float], tables: list[Any], indexes: list[Any], left: int) -> None:
    print("  load average (1 min) at the phase boundaries: " + ", ".join(f"{x:.2f}" for x in load))
    for name, dead, autovacuums, size in tables:
        print(
            f"  {name}: {dead:,} dead tuples, {autovacuums} autovacuums, "
            f"{size / 2**20:,.0f} MB with indexes"
        )
    print("  runs indexes over 1 MB: " + ", ".join(f"{n} {b / 2**20:,.1f} MB" for n, b in indexes))
    print(f"  expired runs left: {left:,}" + ("" if left == 0 else "   <-- NOT ALL DELETED"))


# --- main ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> tuple[Options, list[int]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--finished", type=int, default=1_000_000, help="expired finished runs")
    parser.add_argument("--recent", type=int, default=0, help="finished runs not yet expired")
    parser.add_argument("--pending", type=int, default=100_000, help="pending runs to claim")
    parser.add_argument("--claims", type=int, default=3000, help="claims before and after")
    parser.add_argument("--claim-every-ms", type=float, default=2.0, help="claim pacing")
    parser.add_argument("--lease", type=float, default=3600.0, help="claims' lease, seconds")
    parser.add_argument("--batches", default="1000,10000", help="purge batch sizes: 1000,10000")
    parser.add_argument("--purge-pause-ms", type=float, default=0.0, help="between purge calls")
    parser.add_argument("--explain", action="store_true", help="plans of two purge calls")
    parser.add_argument("--async-commit", action="store_true", help="claims without WAL flush")
    parser.add_argument(
        "--leave-running", action="store_true", help="do not complete the claimed runs"
    )
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes integers separated by commas, got {args.batches!r}")
    if min(batches) < 1 or args.finished < 1 or args.claims < 2 or args.recent < 0:
        parser.error("--batches and --finished need values >= 1, --claims >= 2, --recent >= 0")
    if args.pending < 2 * args.claims + 1000:
        parser.error("--pending must be at least twice --claims + 1000 (warm-up and purge)")
    if not 0 < args.lease <= 86400 or args.claim_every_ms < 0 or args.purge_pause_ms < 0:
        parser.error("--lease takes 0 < seconds <= 86400; the pauses cannot be negative")
    opts = Options(
        dsn=args.dsn,
        finished=args.finished,
        recent=args.recent,
        pending=args.pending,
        claims=args.claims,
        every=args.claim_every_ms / 1000,
        lease=args.lease,
        pause=args.purge_pause_ms / 1000,
        explain=args.explain,
        async_commit=args.async_commit,
        complete=not args.leave_running,
    )
    return opts, batches


def main(argv: list[str] | None = None) -> int:
    opts, batches = parse(argv)
    # a plain kill ends the run through the finally blocks: children stopped, database dropped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    name = DB_PREFIX + uuid.uuid4().hex[:10]
    db = sql.Identifier(name)
    with psycopg.connect(opts.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(db))
        server = admin.execute(
            "select current_setting('server_version'), current_setting('autovacuum'), "
            "current_setting('synchronous_commit'), current_setting('shared_buffers')"
        ).fetchone()
    assert server is not None
    print(
        f"scratch database {name}; PostgreSQL {server[0]}, autovacuum {server[1]}, "
        f"synchronous_commit {server[2]}, shared_buffers {server[3]}, {os.cpu_count()} CPUs"
        + ("; claims with synchronous_commit off" if opts.async_commit else "")
    )
    try:
        install(with_db(opts.dsn, name))
        for batch in batches:
            scenario(with_db(opts.dsn, name), opts, batch)
    finally:
        with psycopg.connect(opts.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(db))
        print(f"\ndropped {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
