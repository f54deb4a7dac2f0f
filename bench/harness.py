"""The pgdurable benchmark: ``python -m bench [--dsn DSN] [--smoke] [--out DIR] [--only W1,W3]``.

Creates a database of its own on the server (dropped at the end), installs the schema, measures
the raw-PostgreSQL floor and every workload of the performance contract, prints one JSON line
per figure, then a markdown table, and writes results.jsonl, results.md and ratios.png to
--out. Every figure is compared with the floor measured in the same run: the machine is noisy,
ratios travel better than microseconds. No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
# A1000 runs last: it shifts the engine clock of the bench database.
WORKLOADS = (
    "W1",
    "W1A",
    "W2",
    "W2L",
    "W3",
    "W4",
    "WAKE",
    "SCALE",
    "CL",
    "MEM",
    "IMPORT",
    "A1000",
)


@dataclass(frozen=True)
class Sizes:
    floor_ops: int
    w1_steps: int
    w1_reps: int
    w2_workflows: int
    w2_processes: int
    w2_concurrency: int
    w3_steps: int
    w3_reps: int
    w4_single: int
    w4_batched: int
    w4_batch: int
    wake_runs: int
    scale_levels: tuple[int, ...]
    scale_sleeping: int
    scale_cycles: int
    mem_runs: int
    import_reps: int
    a_parked: int
    a_active: int
    a_steps: int
    cl_finished: int
    cl_pending: int
    cl_claims: int
    cl_explain: int
    cl_running: int
    w2l_rounds: int


FULL = Sizes(
    floor_ops=1000,
    w1_steps=500,
    w1_reps=5,
    w2_workflows=2000,
    w2_processes=2,
    w2_concurrency=8,
    w3_steps=500,
    w3_reps=5,
    w4_single=5000,
    w4_batched=50_000,
    w4_batch=5000,
    wake_runs=200,
    scale_levels=(0, 100_000, 1_000_000),
    scale_sleeping=100_000,
    scale_cycles=1000,
    mem_runs=100_000,
    import_reps=7,
    a_parked=1000,
    a_active=100,
    a_steps=100,
    cl_finished=1_000_000,
    cl_pending=100_000,
    cl_claims=2000,
    cl_explain=20,
    cl_running=1000,
    w2l_rounds=2,
)
SMOKE = Sizes(
    floor_ops=50,
    w1_steps=20,
    w1_reps=2,
    w2_workflows=50,
    w2_processes=2,
    w2_concurrency=4,
    w3_steps=20,
    w3_reps=2,
    w4_single=100,
    w4_batched=200,
    w4_batch=100,
    wake_runs=10,
    scale_levels=(0, 1000, 2000),
    scale_sleeping=1000,
    scale_cycles=30,
    mem_runs=200,
    import_reps=2,
    a_parked=40,
    a_active=10,
    a_steps=10,
    cl_finished=10_000,
    cl_pending=2000,
    cl_claims=100,
    cl_explain=3,
    cl_running=100,
    w2l_rounds=1,
)


def with_db(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


class Report:
    """Collects figures; each is printed at once as one JSON line."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def figure(
        self,
        workload: str,
        name: str,
        value: float | None,
        unit: str,
        *,
        ratio: float | None = None,
        ratio_to: str | None = None,
        goal: str | None = None,
        met: bool | None = None,
        **extra: Any,
    ) -> None:
        row: dict[str, Any] = {
            "workload": workload,
            "figure": name,
            "value": None if value is None else round(value, 3),
            "unit": unit,
            "ratio": None if ratio is None else round(ratio, 3),
            "ratio_to": ratio_to,
            "goal": goal,
            "met": met,
        }
        row.update(extra)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def failed(self, workload: str, exc: BaseException) -> None:
        self.errors.append(workload)
        row = {
            "workload": workload,
            "figure": "error",
            "value": None,
            "unit": "",
            "ratio": None,
            "ratio_to": None,
            "goal": None,
            "met": False,
            "error": f"{type(exc).__name__}: {exc}",
        }
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        traceback.print_exc(file=sys.stderr)

    def get(self, workload: str, name: str) -> dict[str, Any] | None:
        for row in self.rows:
            if row["workload"] == workload and row["figure"] == name:
                return row
        return None

    def markdown(self) -> str:
        lines = [
            "| workload | figure | value | unit | ratio | to | goal | met |",
            "|---|---|---:|---|---:|---|---|---|",
        ]
        for r in self.rows:
            value = "" if r["value"] is None else f"{r['value']:,.2f}".rstrip("0").rstrip(".")
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            if r["figure"] == "error":
                value = r.get("error", "")
            lines.append(
                f"| {r['workload']} | {r['figure']} | {value} | {r['unit']} | {ratio} | "
                f"{r['ratio_to'] or ''} | {r['goal'] or ''} | {met} |"
            )
        return "\n".join(lines)


# --- the floor ----------------------------------------------------------------------------------


def floor_select1(conn: psycopg.Connection[Any], n: int) -> float:
    for _ in range(20):
        conn.execute("select 1", prepare=True).fetchone()
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("select 1", prepare=True).fetchone()
    return (time.perf_counter() - t0) / n * 1e6


def floor_insert_commit(conn: psycopg.Connection[Any], n: int) -> float:
    """One single-row INSERT in autocommit mode: a round trip and a commit."""
    q = "insert into bench_floor (v) values (%s)"
    for _ in range(20):
        conn.execute(q, ("warm",), prepare=True)
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute(q, (str(i),), prepare=True)
    return (time.perf_counter() - t0) / n * 1e6


def floor_two_inserts(conn: psycopg.Connection[Any], n: int) -> float:
    """Two INSERTs in one transaction, opened and committed the way psycopg does it."""
    q = "insert into bench_floor (v) values (%s)"
    for _ in range(20):
        with conn.transaction():
            conn.execute(q, ("a",), prepare=True)
            conn.execute(q, ("b",), prepare=True)
    t0 = time.perf_counter()
    for _ in range(n):
        with conn.transaction():
            conn.execute(q, ("a",), prepare=True)
            conn.execute(q, ("b",), prepare=True)
    return (time.perf_counter() - t0) / n * 1e6


# --- helpers ------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def workers(
    dsn: str, queues: str, processes: int, concurrency: int, extra: tuple[str, ...] = ()
) -> Iterator[list[int]]:
    """Start worker subprocesses and wait until each is claiming; SIGTERM them at the end.
    ``extra``: more arguments of ``python -m bench.worker``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.worker",
                "--dsn",
                dsn,
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bench worker did not start (exit {p.poll()}, said {line!r})")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_done(
    conn: psycopg.Connection[Any],
    queue: str,
    n: int,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done, failed = conn.execute(
            "select count(*) filter (where status = 'completed'),"
            " count(*) filter (where status = 'failed')"
            " from pgdurable.runs where queue_name = %s",
            (queue,),
        ).fetchone()
        if failed:
            raise RuntimeError(f"{failed} runs of queue {queue!r} failed")
        if on_progress is not None:
            on_progress(done)
        if done >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {done} of {n} runs of queue {queue!r} completed in {timeout} s"
            )
        time.sleep(0.02)


def enqueue(wf: Any, n: int, batch: int = 5000) -> None:
    for lo in range(0, n, batch):
        wf.start_many([(i,) for i in range(lo, min(n, lo + batch))])


# --- the harness --------------------------------------------------------------------------------


class Bench:
    def __init__(self, dsn: str, sizes: Sizes, report: Report, smoke: bool) -> None:
        from bench.apps import build

        self.dsn = dsn
        self.sizes = sizes
        self.report = report
        self.smoke = smoke
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.floor_conn = psycopg.connect(dsn, autocommit=True)
        self.b = build(dsn)
        self.floor: dict[str, float] = {}

    def close(self) -> None:
        self.b.app.close()
        self.conn.close()
        self.floor_conn.close()

    def run_floor(self) -> None:
        n = self.sizes.floor_ops
        c = self.floor_conn
        self.floor["select1"] = statistics.median(floor_select1(c, n) for _ in range(3))
        self.floor["insert_commit"] = statistics.median(floor_insert_commit(c, n) for _ in range(3))
        self.floor["two_inserts"] = statistics.median(
            floor_two_inserts(c, n // 2) for _ in range(3)
        )
        r = self.report
        r.figure("floor", "select1", self.floor["select1"], "us", n=n)
        r.figure(
            "floor",
            "insert_commit",
            self.floor["insert_commit"],
            "us",
            ratio=self.floor["insert_commit"] / self.floor["select1"],
            ratio_to="select1",
            n=n,
        )
        r.figure(
            "floor",
            "two_inserts",
            self.floor["two_inserts"],
            "us",
            ratio=self.floor["two_inserts"] / self.floor["select1"],
            ratio_to="select1",
            n=n // 2,
        )

    def run_w1(self) -> None:
        from bench.apps import TIMINGS

        s = self.sizes
        self.b.w1(5)  # warm: prepared statements, pool connection
        per_step, floors = [], []
        for _ in range(s.w1_reps):
            floors.append(floor_insert_commit(self.floor_conn, s.floor_ops))
            assert self.b.w1(s.w1_steps) == s.w1_steps
            per_step.append(TIMINGS["w1"] / s.w1_steps * 1e6)
        us, fl = statistics.median(per_step), statistics.median(floors)
        self.report.figure(
            "W1",
            "noop_step",
            us,
            "us/step",
            ratio=us / fl,
            ratio_to="insert_commit",
            goal="<= 1.2x",
            met=us / fl <= 1.2,
            floor_us=round(fl, 1),
            steps=s.w1_steps,
            reps=s.w1_reps,
        )

    def run_w1a(self) -> None:
        from bench.async_bench import run_w1a

        run_w1a(self)

    def run_a1000(self) -> None:
        from bench.async_bench import run_a1000

        run_a1000(self)

    def run_w2(self) -> None:
        s = self.sizes
        n = s.w2_workflows
        enqueue(self.b.w2, n)
        with workers(self.dsn, "w2", s.w2_processes, s.w2_concurrency):
            wait_done(self.conn, "w2", n, timeout=60 if self.smoke else 600)
        secs, _first, _last = self.conn.execute(
            "select extract(epoch from max(finished_at) - min(started_at))::float8,"
            " min(started_at), max(finished_at) from pgdurable.runs where queue_name = 'w2'"
        ).fetchone()
        wfs = n / secs
        fl = self.floor["insert_commit"]
        self.report.figure(
            "W2",
            "workflows_per_s",
            wfs,
            "wf/s",
            ratio=(1e6 / wfs) / fl,
            ratio_to="insert_commit (us per workflow)",
            goal="<= 3.0x",
            met=(1e6 / wfs) / fl <= 3.0,
            workflows=n,
            processes=s.w2_processes,
            concurrency=s.w2_concurrency,
            seconds=round(secs, 3),
        )
        self.report.figure(
            "W2",
            "steps_per_s",
            3 * wfs,
            "steps/s",
            ratio=(1e6 / (3 * wfs)) / fl,
            ratio_to="insert_commit (us per step)",
        )

    def run_w2l(self) -> None:
        from bench.flow_bench import run_w2l

        run_w2l(self)

    def run_cl(self) -> None:
        from bench.flow_bench import run_cl

        run_cl(self)

    def run_w3(self) -> None:
        s = self.sizes
        self.conn.execute("truncate bench_app")
        self.b.w3(5)
        per_step, floors = [], []
        for _ in range(s.w3_reps):
            self.conn.execute("truncate bench_app")
            floors.append(floor_two_inserts(self.floor_conn, s.floor_ops // 2))
            assert self.b.w3(s.w3_steps) == s.w3_steps
            per_step.append(TIMINGS_w3() / s.w3_steps * 1e6)
            rows = self.conn.execute("select count(*) from bench_app").fetchone()[0]
            if rows != s.w3_steps:
                raise RuntimeError(f"W3 expected {s.w3_steps} application rows, found {rows}")
        us, fl = statistics.median(per_step), statistics.median(floors)
        self.report.figure(
            "W3",
            "transaction_step",
            us,
            "us/step",
            ratio=us / fl,
            ratio_to="two_inserts",
            goal="<= 1.2x",
            met=us / fl <= 1.2,
            floor_us=round(fl, 1),
            steps=s.w3_steps,
            reps=s.w3_reps,
            rows_verified=rows,
            rows_expected=s.w3_steps,
        )

    def run_w4(self) -> None:
        s = self.sizes
        wf = self.b.w4
        for i in range(10):
            wf.start(-i)
        t0 = time.perf_counter()
        for i in range(s.w4_single):
            wf.start(i)
        single = s.w4_single / (time.perf_counter() - t0)
        wf.start_many([(i,) for i in range(min(s.w4_batch, 100))])
        t0 = time.perf_counter()
        enqueue(wf, s.w4_batched, s.w4_batch)
        batched = s.w4_batched / (time.perf_counter() - t0)
        fl = self.floor["insert_commit"]
        self.report.figure(
            "W4",
            "single_starts_per_s",
            single,
            "starts/s",
            ratio=(1e6 / single) / fl,
            ratio_to="insert_commit (us per start)",
            goal="<= 1.2x",
            met=(1e6 / single) / fl <= 1.2,
            starts=s.w4_single,
        )
        self.report.figure(
            "W4",
            "batched_starts_per_s",
            batched,
            "starts/s",
            ratio=(1e6 / batched) / fl,
            ratio_to="insert_commit (us per start)",
            goal="<= 0.05x",
            met=(1e6 / batched) / fl <= 0.05,
            starts=s.w4_batched,
            batch=s.w4_batch,
        )
        self.conn.execute("delete from pgdurable.runs where queue_name = 'w4'")

    def run_wake(self) -> None:
        import random
        import threading

        s = self.sizes
        b = self.b
        worker = b.app.worker(concurrency=2, queues=["wake"])
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        if not worker.ready.wait(10):
            raise RuntimeError("wake worker did not start")
        time.sleep(0.3)  # its listener connects
        try:
            lat = []
            for i in range(s.wake_runs):
                time.sleep(random.uniform(0.01, 0.03))  # the worker is idle, waiting on NOTIFY
                t0 = time.perf_counter()
                b.wake.start(i)
                at = b.marks.wait(i, timeout=10)
                if at is None:
                    raise TimeoutError(f"run {i} never started its first step")
                lat.append((at - t0) * 1e3)
            fl = self.floor["insert_commit"] / 1e3
            p50 = percentile(lat, 50)
            self.report.figure(
                "WAKE",
                "start_to_first_step_p50",
                p50,
                "ms",
                ratio=p50 / fl,
                ratio_to="insert_commit",
                goal="<= 20 ms",
                met=p50 <= 20,
                runs=s.wake_runs,
            )
            self.report.figure(
                "WAKE",
                "start_to_first_step_p99",
                percentile(lat, 99),
                "ms",
                ratio=percentile(lat, 99) / fl,
                ratio_to="insert_commit",
            )
            if b.event_wake is None:
                self.report.figure(
                    "WAKE",
                    "event_to_next_step_p50",
                    None,
                    "ms",
                    note="not measured: events land in issue 3",
                )
            else:
                self._event_wake(fl)
        finally:
            worker.stop()
            thread.join(30)

    def _event_wake(self, floor_ms: float) -> None:
        b = self.b
        lat = []
        base = 1_000_000
        for j in range(self.sizes.wake_runs):
            i = base + j
            h = b.event_wake.start(i)
            deadline = time.monotonic() + 10
            while h.status() != "waiting":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"event run {i} never started waiting")
                time.sleep(0.002)
            time.sleep(0.01)
            t0 = time.perf_counter()
            b.app.emit_event(f"bench-wake:{i}", {"i": i})
            at = b.marks.wait(i, timeout=10)
            if at is None:
                raise TimeoutError(f"event run {i} never resumed")
            lat.append((at - t0) * 1e3)
        p50 = percentile(lat, 50)
        self.report.figure(
            "WAKE",
            "event_to_next_step_p50",
            p50,
            "ms",
            ratio=p50 / floor_ms,
            ratio_to="insert_commit",
            goal="<= 20 ms",
            met=p50 <= 20,
            runs=len(lat),
        )
        self.report.figure(
            "WAKE",
            "event_to_next_step_p99",
            percentile(lat, 99),
            "ms",
            ratio=percentile(lat, 99) / floor_ms,
            ratio_to="insert_commit",
        )

    # --- scale ----------------------------------------------------------------------------------

    def _claim_cycle_us(self, cycles: int) -> float:
        """Enqueue ``cycles`` runs, then time claim_runs + complete_run one run at a time."""
        from psycopg.types.json import Jsonb

        from pgdurable._app import call_sql

        c = self.conn
        c.execute(
            "select count(*) from pgdurable.start_runs('bench_scale',"
            " array(select jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb)"
            ' from generate_series(1, %s) g), \'{"queue": "scale"}\')',
            (cycles + 20,),
        )
        c.execute("vacuum analyze pgdurable.runs")
        args = ("bench-scale", ["scale"], 1, 30.0, ["bench_scale"])
        out = Jsonb(None)
        for _ in range(20):
            row = call_sql(c, "claim_runs", args).fetchone()
            call_sql(c, "complete_run", (row[0], row[5], out))
        t0 = time.perf_counter()
        for _ in range(cycles):
            row = call_sql(c, "claim_runs", args).fetchone()
            call_sql(c, "complete_run", (row[0], row[5], out))
        return (time.perf_counter() - t0) / cycles * 1e6

    def _add_history(self, n: int, status: str) -> None:
        """Bulk-insert n runs (finished with one checkpoint each, or sleeping with a timer)."""
        if n <= 0:
            return
        c = self.conn
        tag = uuid.uuid4().hex[:8]
        with c.transaction():
            c.execute(
                """
                insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status,
                    input, output, attempt, available_at, created_at, started_at, updated_at,
                    finished_at)
                select gen_random_uuid(), %(tag)s || '-' || g, 'bench_history', 'scale', %(st)s,
                       jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb),
                       case when %(st)s = 'completed' then to_jsonb(g) end, 1,
                       now() - interval '1 day', now() - interval '1 day',
                       now() - interval '1 day', now() - interval '1 day',
                       case when %(st)s = 'completed' then now() - interval '1 day' end
                  from generate_series(1, %(n)s) g
                """,
                {"tag": tag, "st": status, "n": n},
            )
            if status == "completed":
                c.execute(
                    """
                    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name,
                        output, run_attempt, started_at, completed_at)
                    select id, 'noop', 0, 'step', 'noop', 'null', 1, finished_at, finished_at
                      from pgdurable.runs where workflow_id like %s
                    """,
                    (tag + "-%",),
                )
            else:
                c.execute(
                    """
                    insert into pgdurable.timers (run_id, fire_at, reason)
                    select id, now() + interval '30 days', 'sleep'
                      from pgdurable.runs where workflow_id like %s
                    """,
                    (tag + "-%",),
                )
        c.execute("vacuum analyze pgdurable.runs")
        c.execute("vacuum analyze pgdurable.checkpoints")
        c.execute("vacuum analyze pgdurable.timers")

    def run_scale(self) -> None:
        s = self.sizes
        have = 0
        results: list[tuple[str, float]] = []
        for level in s.scale_levels:
            self._add_history(level - have, "completed")
            have = level
            us = statistics.median(self._claim_cycle_us(s.scale_cycles) for _ in range(3))
            results.append((f"finished_{level}", us))
        self._add_history(s.scale_sleeping, "sleeping")
        us = statistics.median(self._claim_cycle_us(s.scale_cycles) for _ in range(3))
        results.append((f"finished_{have}+sleeping_{s.scale_sleeping}", us))
        # The next workloads (memory) measure the worker, not the history: start them clean.
        self.conn.execute("truncate pgdurable.runs, pgdurable.checkpoints, pgdurable.timers")
        empty = results[0][1]
        for name, us in results:
            last = name == results[-2][0]
            self.report.figure(
                "SCALE",
                f"claim_complete_{name}",
                us,
                "us/cycle",
                ratio=us / empty,
                ratio_to="claim_complete_finished_0",
                goal="<= 1.2x" if last else None,
                met=(us / empty <= 1.2) if last else None,
                floor_ratio=round(us / self.floor["insert_commit"], 2),
            )

    # --- memory ---------------------------------------------------------------------------------

    def run_mem(self) -> None:
        s = self.sizes
        n = s.mem_runs
        enqueue(self.b.mem, n)
        samples: dict[str, int] = {}
        marks = {max(1, n // 10): "rss_after_10pct", max(1, n // 2): "rss_after_50pct"}
        # The worker only starts once everything is enqueued; its idle RSS is taken after it
        # claimed nothing yet but has imported and connected: a queue nobody uses.
        with workers(self.dsn, "mem-idle", 1, 8) as pids:
            time.sleep(1.0)
            samples["rss_idle"] = rss_kib(pids[0])
        self.conn.execute("select 1")
        with workers(self.dsn, "mem", 1, 8) as pids:
            pid = pids[0]
            time.sleep(0.3)
            samples["rss_started"] = rss_kib(pid)

            def progress(done: int) -> None:
                for at, name in marks.items():
                    if done >= at and name not in samples:
                        samples[name] = rss_kib(pid)

            t0 = time.perf_counter()
            wait_done(self.conn, "mem", n, timeout=60 if self.smoke else 1800, on_progress=progress)
            secs = time.perf_counter() - t0
            samples["rss_after_all"] = rss_kib(pid)
        base = samples.get("rss_after_10pct", samples["rss_started"])
        for name in (
            "rss_idle",
            "rss_started",
            "rss_after_10pct",
            "rss_after_50pct",
            "rss_after_all",
        ):
            if name not in samples:
                continue
            kib = samples[name]
            last = name == "rss_after_all"
            self.report.figure(
                "MEM",
                name,
                kib / 1024,
                "MiB",
                ratio=kib / base,
                ratio_to="rss_after_10pct",
                goal="<= 1.1x (flat)" if last else None,
                met=(kib / base <= 1.1) if last else None,
                **({"runs": n, "seconds": round(secs, 1)} if last else {}),
            )

    # --- import ---------------------------------------------------------------------------------

    def run_import(self) -> None:
        code = (
            "import time; t = time.perf_counter(); import pgdurable; print(time.perf_counter() - t)"
        )
        env = dict(os.environ)
        times, bare = [], []
        for _ in range(self.sizes.import_reps):
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            )
            times.append(float(out.stdout.strip()) * 1e3)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        bare_ms = statistics.median(bare)
        self.report.figure(
            "IMPORT",
            "import_pgdurable",
            ms,
            "ms",
            ratio=ms / bare_ms,
            ratio_to="bare interpreter start",
            goal="<= 150 ms",
            met=ms <= 150,
            bare_interpreter_ms=round(bare_ms, 1),
        )


def TIMINGS_w3() -> float:
    from bench.apps import TIMINGS

    return TIMINGS["w3"]


def server_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    names = (
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
        "work_mem",
        "full_page_writes",
        "wal_sync_method",
    )
    return {n: conn.execute(f"show {n}").fetchone()[0] for n in names}  # type: ignore[index]


def chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = []  # (label, ratio, goal)
    for wl, fig, label, goal in (
        ("W1", "noop_step", "W1 no-op step\n/ INSERT+COMMIT", 1.2),
        ("W1A", "noop_step", "W1A async step\n/ INSERT+COMMIT", 1.3),
        ("W3", "transaction_step", "W3 tx step\n/ two INSERTs", 1.2),
        ("W2", "workflows_per_s", "W2 us/workflow\n/ INSERT+COMMIT", 3.0),
        ("W4", "single_starts_per_s", "W4 single start\n/ INSERT+COMMIT", 1.2),
        ("W4", "batched_starts_per_s", "W4 batched start\n/ INSERT+COMMIT", 0.05),
    ):
        row = report.get(wl, fig)
        if row and row["ratio"] is not None:
            cost.append((label, row["ratio"], goal))
    for row in report.rows:
        if (
            row["workload"] == "SCALE"
            and row["figure"] != "claim_complete_finished_0"
            and row["ratio"] is not None
        ):
            label = row["figure"].replace("claim_complete_", "claim ").replace("finished_", "fin ")
            cost.append((label.replace("+", "\n+"), row["ratio"], 1.2))
    cl = report.get("CL", "claim_limited_p50")
    if cl and cl["ratio"] is not None:
        cost.append(("claim limited\n/ unconfigured", cl["ratio"], 1.2))
    mem = report.get("MEM", "rss_after_all")
    if mem and mem["ratio"] is not None:
        cost.append(("worker RSS\nafter all / 10%", mem["ratio"], 1.1))

    thr = []  # (label, value / goal)
    for wl, fig, label, goal in (("W2", "workflows_per_s", "W2 wf/s\n/ 1,000", 1000),):
        row = report.get(wl, fig)
        if row and row["value"] is not None:
            thr.append((label, row["value"] / goal))
    for wl, fig, label, goal in (
        ("WAKE", "start_to_first_step_p50", "wake p50\n20 ms / value", 20.0),
        ("IMPORT", "import_pgdurable", "import\n150 ms / value", 150.0),
    ):
        row = report.get(wl, fig)
        if row and row["value"]:
            thr.append((label, goal / row["value"]))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    if cost:
        xs = range(len(cost))
        colors = ["tab:green" if r <= g else "tab:red" for _, r, g in cost]
        ax.bar(xs, [r for _, r, _ in cost], color=colors)
        for x, (_, r, g) in zip(xs, cost, strict=True):
            ax.hlines(g, x - 0.4, x + 0.4, colors="black", linestyles="dashed")
            ax.text(x, r, f"{r:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [c[0] for c in cost], fontsize=7)
    ax.set_title("cost ratios, same run (lower is better; dashed = goal)")
    ax.set_ylabel("ratio")
    ax = axes[1]
    if thr:
        xs = range(len(thr))
        ax.bar(
            xs, [v for _, v in thr], color=["tab:green" if v >= 1 else "tab:red" for _, v in thr]
        )
        ax.axhline(1.0, color="black", linestyle="dashed")
        for x, (_, v) in zip(xs, thr, strict=True):
            ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [t[0] for t in thr], fontsize=7)
    ax.set_title("against goal (higher is better; 1 = goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="server to benchmark (default: the embedded PostgreSQL)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    args = parser.parse_args(argv)
    only = WORKLOADS if not args.only else tuple(w.strip().upper() for w in args.only.split(","))
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {','.join(WORKLOADS)}")
    server = args.dsn
    if server is None:
        from pgdurable._embedded import embedded_dsn

        server = embedded_dsn()
    sizes = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dbname = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'create database "{dbname}"')
    dsn = with_db(server, dbname)
    report = Report()
    try:
        from pgdurable._schema import init_schema

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
            settings = server_settings(conn)
        meta = {
            "workload": "meta",
            "figure": "machine",
            "smoke": args.smoke,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "psycopg": psycopg.__version__,
            "postgres": settings,
        }
        print(json.dumps(meta), flush=True)
        bench = Bench(dsn, sizes, report, args.smoke)
        try:
            bench.run_floor()
            steps: dict[str, Callable[[], None]] = {
                "W1": bench.run_w1,
                "W1A": bench.run_w1a,
                "W2": bench.run_w2,
                "W2L": bench.run_w2l,
                "CL": bench.run_cl,
                "W3": bench.run_w3,
                "W4": bench.run_w4,
                "WAKE": bench.run_wake,
                "SCALE": bench.run_scale,
                "MEM": bench.run_mem,
                "IMPORT": bench.run_import,
                "A1000": bench.run_a1000,
            }
            for name in WORKLOADS:
                if name not in only:
                    continue
                try:
                    steps[name]()
                except Exception as exc:
                    report.failed(name, exc)
        finally:
            bench.close()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{dbname}" with (force)')

    table = report.markdown()
    print()
    print(table)
    (out / "results.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [meta, *report.rows]) + "\n"
    )
    (out / "results.md").write_text(
        f"Command: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
        f"PostgreSQL: {json.dumps(settings)}\n\n{table}\n"
    )
    try:
        chart(report, out / "ratios.png")
        print(f"\nwrote {out / 'results.md'}, {out / 'results.jsonl'}, {out / 'ratios.png'}")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
    return 1 if report.errors else 0
