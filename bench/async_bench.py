"""The async workloads of the benchmark.

W1A: W1's workflow written as ``async def`` with an ``async def`` no-op step, executed by a
worker's async lane, measured exactly like W1 (the same steps, warm-up and repetitions, each
repetition after a block of the INSERT+COMMIT floor; the loop is timed inside the workflow).
A second figure awaits the same workflow on the caller's event loop (``await wf(n)``), which is
how W1 runs its sync workflow: the difference between the two is the lane's.

A1000: one worker process whose async lane has 1,000 runs *parked* (half in ``sleep_async``,
half in ``wait_for_event_async``) or *held* (1,000 tasks awaiting inside a step) while 100
active runs loop over no-op steps. Figures: the active runs' steps/s with the 1,000 present and
absent, the worker's RSS, the database connections it had open (peak, sampled), and the time
until all 1,000 complete once their timers fire (engine clock shifted) and their events are
emitted, or the held ones are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pgdurable
from bench.apps import TIMINGS, AsyncBenchApp, build_async
from bench.harness import floor_insert_commit, rss_kib, workers

if TYPE_CHECKING:
    from bench.harness import Bench


# --- W1A ----------------------------------------------------------------------------------------


def _w1a_reps(bench: Bench, run: Callable[[int], Any]) -> tuple[float, float]:
    """(median us per step, median floor us), W1's procedure with ``run(n)`` as the call."""
    s = bench.sizes
    if run(5) != 5:  # warm: prepared statements, pool connections
        raise RuntimeError("W1A warm-up run returned a wrong result")
    per_step, floors = [], []
    for _ in range(s.w1_reps):
        floors.append(floor_insert_commit(bench.floor_conn, s.floor_ops))
        if run(s.w1_steps) != s.w1_steps:
            raise RuntimeError("W1A run returned a wrong result")
        per_step.append(TIMINGS["w1a"] / s.w1_steps * 1e6)
    return statistics.median(per_step), statistics.median(floors)


def _w1a_on_lane(bench: Bench, ab: AsyncBenchApp) -> tuple[float, float]:
    worker = pgdurable.Worker(ab.app, concurrency=1, queues=["w1a"], async_concurrency=4)
    thread = threading.Thread(target=worker.run, name="bench-w1a-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(10):
        raise RuntimeError("W1A worker did not start")
    timeout = 60 if bench.smoke else 600
    try:
        return _w1a_reps(bench, lambda n: ab.w1a.start(n).result(timeout=timeout))
    finally:
        worker.stop()
        thread.join(30)


def _w1a_inline(bench: Bench, ab: AsyncBenchApp) -> tuple[float, float]:
    # One loop for every repetition, as one thread runs W1's: the App's async pool stays warm.
    # (asyncio.Runner would do, from Python 3.11 on.)
    loop = asyncio.new_event_loop()
    try:
        return _w1a_reps(bench, lambda n: loop.run_until_complete(ab.w1a(n)))
    finally:
        loop.run_until_complete(ab.app.close_async())
        loop.close()


def run_w1a(bench: Bench) -> None:
    s = bench.sizes
    ab = build_async(bench.dsn)
    try:
        lane = _w1a_on_lane(bench, ab)
        inline = _w1a_inline(bench, ab)
    finally:
        ab.app.close()
    w1 = bench.report.get("W1", "noop_step")
    for name, (us, fl), how in (
        ("noop_step", lane, "executed by a worker's async lane"),
        ("noop_step_inline", inline, "await wf(n) on the caller's event loop, like W1"),
    ):
        bench.report.figure(
            "W1A",
            name,
            us,
            "us/step",
            ratio=us / fl,
            ratio_to="insert_commit",
            floor_us=round(fl, 1),
            steps=s.w1_steps,
            reps=s.w1_reps,
            to_w1=None if w1 is None or not w1["value"] else round(us / w1["value"], 3),
            how=how,
        )


# --- A1000 --------------------------------------------------------------------------------------

QUEUE = "a1000"
PARKED = ["bench_a_sleep", "bench_a_wait"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Batch:
    steps_per_s: float
    seconds: float
    peak_connections: int
    cpu_us_per_step: float  # the worker process's CPU time over the batch, per step
    cpu_busy: float  # that CPU time / the batch's wall time (1.0 = one core all the time)


class A1000:
    def __init__(self, bench: Bench) -> None:
        s = bench.sizes
        self.bench = bench
        self.conn = bench.conn
        self.parked = s.a_parked
        self.active = s.a_active
        self.steps = s.a_steps
        self.timeout = 120.0 if bench.smoke else 900.0
        # Tags every connection of the worker process: pg_stat_activity counts them.
        self.app_name = f"bench-a1000-{uuid.uuid4().hex[:8]}"
        self.concurrency = self.parked + self.active
        self.ab = build_async(bench.dsn)  # this process only starts runs and emits events
        self.pid = 0
        self.batches = 0
        self.rss: dict[str, int] = {}
        self.conns: dict[str, int] = {}
        self.secs: dict[str, float] = {}
        self.thr: dict[str, Batch] = {}
        self.verified: dict[str, int] = {}

    # --- probes ---------------------------------------------------------------------------------

    def _row(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        row = self.conn.execute(query, params).fetchone()
        if row is None:
            raise RuntimeError(f"A1000: no row from {query[:60]!r}")
        return tuple(row)

    def _connections(self) -> int:
        query = "select count(*) from pg_stat_activity where application_name = %s"
        return int(self._row(query, (self.app_name,))[0])

    def _count(self, workflows: list[str], statuses: list[str], batch: int | None = None) -> int:
        failed, n = self._row(
            "select count(*) filter (where status = 'failed'),"
            " count(*) filter (where workflow_name = any(%s) and status = any(%s)"
            " and (%s::int is null or (input->'args'->>0)::int = %s))"
            " from pgdurable.runs where queue_name = %s",
            (workflows, statuses, batch, batch, QUEUE),
        )
        if failed:
            raise RuntimeError(f"{failed} runs of queue {QUEUE!r} failed")
        return int(n)

    def _until(self, what: str, n: int, count: Callable[[], int]) -> int:
        """Poll until ``count()`` reaches ``n``; return the peak number of worker connections."""
        deadline = time.monotonic() + self.timeout
        peak = 0
        while True:
            peak = max(peak, self._connections())
            got = count()
            if got >= n:
                return peak
            if time.monotonic() > deadline:
                raise TimeoutError(f"A1000: only {got} of {n} {what} after {self.timeout} s")
            time.sleep(0.05)

    def _sample(self, name: str, peak: int | None = None) -> None:
        try:
            self.rss[name] = rss_kib(self.pid)
        except (OSError, RuntimeError) as exc:  # gone, or a zombie (no VmRSS)
            raise RuntimeError(
                f"the A1000 worker process {self.pid} has exited: see its traceback above"
            ) from exc
        self.conns[name] = max(peak or 0, self._connections())

    # --- phases ---------------------------------------------------------------------------------

    def _active_batch(self) -> Batch:
        """100 runs of ``steps`` no-op steps each; steps/s from the runs' own timestamps (first
        claim to last completion, as W2 measures)."""
        self.batches += 1
        b = self.batches
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        self.ab.active.start_many([(b, self.steps)] * self.active)
        peak = self._until(
            "active runs completed",
            self.active,
            lambda: self._count(["bench_a_active"], ["completed"], b),
        )
        cpu, wall = cpu_seconds(self.pid) - cpu0, time.perf_counter() - t0
        secs = self._row(
            "select extract(epoch from max(finished_at) - min(started_at))::float8"
            " from pgdurable.runs where workflow_name = 'bench_a_active'"
            " and (input->'args'->>0)::int = %s",
            (b,),
        )[0]
        steps = self.active * self.steps
        return Batch(steps / secs, secs, peak, cpu / steps * 1e6, cpu / wall)

    def _verified(self, workflows: list[str]) -> int:
        """Completed runs whose output is the value they were given (sleepers and holders return
        their argument, waiters the payload of their event, emitted as that same number)."""
        return int(
            self._row(
                "select count(*) from pgdurable.runs where workflow_name = any(%s)"
                " and status = 'completed' and output = input->'args'->0",
                (workflows,),
            )[0]
        )

    def _park(self) -> None:
        half = self.parked // 2
        t0 = time.perf_counter()
        self.ab.sleeper.start_many([(i, 3600.0) for i in range(half)])
        self.ab.waiter.start_many([(i,) for i in range(self.parked - half)])
        peak = self._until(
            "runs parked", self.parked, lambda: self._count(PARKED, ["sleeping", "waiting"])
        )
        self.secs["park"] = time.perf_counter() - t0
        time.sleep(0.5)  # the lane's tasks of the parked runs have ended
        self._sample("parked", peak)
        self.thr["parked"] = self._active_batch()
        self._sample("parked_active", self.thr["parked"].peak_connections)
        # Wake them: engine time two hours on (their timers fire at the worker's next tick)
        # and one event per waiter.
        t0 = time.perf_counter()
        self.conn.execute("select pgdurable.shift_clock(%s)", (timedelta(hours=2),))
        for i in range(self.parked - half):
            self.ab.app.emit_event(f"bench-a1000:{i}", i)
        peak = self._until(
            "parked runs completed", self.parked, lambda: self._count(PARKED, ["completed"])
        )
        self.secs["parked_complete"] = time.perf_counter() - t0
        self.conns["parked_release"] = peak
        verified = self.verified["parked_complete"] = self._verified(PARKED)
        if verified != self.parked:
            raise RuntimeError(f"A1000: {verified} of {self.parked} parked runs returned right")

    def _hold(self) -> None:
        t0 = time.perf_counter()
        self.ab.holder.start_many([(i,) for i in range(self.parked)])
        peak = self._until(
            "runs held", self.parked, lambda: self._count(["bench_a_hold"], ["running"])
        )
        self.secs["hold"] = time.perf_counter() - t0
        time.sleep(0.5)  # each held run has reached its step
        self._sample("held", peak)
        self.thr["held"] = self._active_batch()
        self._sample("held_active", self.thr["held"].peak_connections)
        t0 = time.perf_counter()
        os.kill(self.pid, signal.SIGUSR1)
        peak = self._until(
            "held runs completed",
            self.parked,
            lambda: self._count(["bench_a_hold"], ["completed"]),
        )
        self.secs["held_complete"] = time.perf_counter() - t0
        self.conns["held_release"] = peak
        verified = self.verified["held_complete"] = self._verified(["bench_a_hold"])
        if verified != self.parked:
            raise RuntimeError(f"A1000: {verified} of {self.parked} held runs returned right")

    def _phases(self) -> None:
        time.sleep(1.0)  # imported, connected, claiming
        self._sample("idle")
        self.thr["alone"] = self._active_batch()
        self._sample("alone", self.thr["alone"].peak_connections)
        # Each condition is bracketed by batches without it: the machine drifts.
        self._park()
        self.thr["alone_mid"] = self._active_batch()
        self._hold()
        self.thr["alone_after"] = self._active_batch()
        self._sample("after", self.thr["alone_after"].peak_connections)

    def run(self) -> None:
        b = self.bench
        b.conn.execute("update pgdurable.settings set allow_clock_shift = true")
        extra = (
            "--async-concurrency",
            str(self.concurrency),
            "--application-name",
            self.app_name,
        )
        try:
            with workers(b.dsn, QUEUE, 1, 1, extra) as pids:
                self.pid = pids[0]
                try:
                    self._phases()
                finally:
                    # A held step never returns by itself: release before the SIGTERM, or
                    # the worker would wait for it at exit.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGUSR1)
        finally:
            b.conn.execute("update pgdurable.settings set allow_clock_shift = false")
            self.ab.app.close()
        self._report()

    def _report(self) -> None:
        r = self.bench.report
        fl = self.bench.floor["insert_commit"]
        n, lane_pool = self.parked, min(self.concurrency, 10) + 1
        bare = [self.thr[k] for k in ("alone", "alone_mid", "alone_after")]
        alone = statistics.mean(b.steps_per_s for b in bare)
        common: dict[str, Any] = {"active_runs": self.active, "steps_per_run": self.steps}
        r.figure(
            "A1000",
            "active_steps_per_s",
            alone,
            "steps/s",
            ratio=(1e6 / alone) / fl,
            ratio_to="insert_commit (us per step)",
            batches=[round(b.steps_per_s, 1) for b in bare],
            worker_cpu_us_per_step=round(statistics.mean(b.cpu_us_per_step for b in bare), 1),
            worker_cpu_busy=round(statistics.mean(b.cpu_busy for b in bare), 2),
            **common,
        )
        for key, what, around in (
            ("parked", "sleeping/waiting", ("alone", "alone_mid")),
            ("held", "awaiting in a step", ("alone_mid", "alone_after")),
        ):
            batch = self.thr[key]
            v = batch.steps_per_s
            near = statistics.mean(self.thr[k].steps_per_s for k in around)
            r.figure(
                "A1000",
                f"active_steps_per_s_{key}",
                v,
                "steps/s",
                ratio=v / near,
                ratio_to="alone, batches around it",
                worker_cpu_us_per_step=round(batch.cpu_us_per_step, 1),
                worker_cpu_busy=round(batch.cpu_busy, 2),
                parked_or_held=n,
                state=what,
                **common,
            )
        for key, label in (
            ("park", "park_s"),
            ("parked_complete", "parked_complete_s"),
            ("hold", "hold_s"),
            ("held_complete", "held_complete_s"),
        ):
            secs = self.secs[key]
            r.figure(
                "A1000",
                label,
                secs,
                "s",
                ratio=(secs * 1e6 / n) / fl,
                ratio_to="insert_commit (us per run)",
                runs=n,
                verified=self.verified.get(key),
            )
        base = self.rss["alone"]
        for key in ("idle", "alone", "parked", "parked_active", "held", "held_active", "after"):
            r.figure(
                "A1000",
                f"rss_{key}",
                self.rss[key] / 1024,
                "MiB",
                ratio=self.rss[key] / base,
                ratio_to="rss_alone",
            )
        idle = max(1, self.conns["idle"])
        for key in (
            "idle",
            "alone",
            "parked",
            "parked_active",
            "parked_release",
            "held",
            "held_active",
            "held_release",
        ):
            r.figure(
                "A1000",
                f"connections_{key}",
                self.conns[key],
                "conns",
                ratio=self.conns[key] / idle,
                ratio_to="connections_idle",
                async_concurrency=self.concurrency,
                async_connections=lane_pool,
            )


def run_a1000(bench: Bench) -> None:
    A1000(bench).run()
