"""Fault injection: many workflows on several ``pgdurable worker`` processes while a seeded RNG
kills workers (SIGKILL, then a replacement), freezes them past their lease (SIGSTOP, SIGCONT:
zombies whose writes must be rejected), terminates their server backends and restarts the
PostgreSQL server the test owns. Afterwards nothing is lost, duplicated, stuck or failed.

Size: $PGDURABLE_CHAOS_RUNS workflows (default 200, about a minute here); seed:
$PGDURABLE_CHAOS_SEED (default 7). The seed fixes the runs' plans and the schedule of fault
kinds; which process a fault hits depends on what is running at that moment. ``pytest -s``
prints the fault counts; the assertion messages carry them too. The workers' logs are kept
when the test fails (or always with $PGDURABLE_CHAOS_KEEP_LOGS=1); the report names their
directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps import chaos_app
from apps.support import query, wait_until
from conftest import ROOT
from owned_server import OwnedServer, owned_pg_fixture  # noqa: F401 (fixture owned_pg)

pytestmark = pytest.mark.slow

RUNS = int(os.environ.get("PGDURABLE_CHAOS_RUNS", "200"))
SEED = int(os.environ.get("PGDURABLE_CHAOS_SEED", "7"))
WORKERS = 3
CONCURRENCY = 4
# Faults go on for FAULT_PHASE seconds while runs are started and events emitted; then the
# survivors get DRAIN seconds to finish everything. The work left at that point takes a few
# seconds; a worker that stops claiming for the 30 s of a pool timeout strands runs past it.
FAULT_PHASE = min(max(15.0, RUNS * 0.15), 600.0)
DRAIN = 20.0 + RUNS * 0.02
STOP_FOR = chaos_app.LEASE + 1.5  # a SIGSTOPped worker stays frozen past its lease
# Work that is due (a pending run, a timer, an expired lease) must be taken up within this many
# seconds, whatever fault just happened: the faults cost a worker or a lease (2 s) at a time,
# never a pool timeout (30 s) during which no worker claims, fires timers or recovers leases.
OVERDUE_LIMIT = 10.0
# An idle worker stops at once on SIGTERM; one blocked on its pool would take the 30 s of a
# pool timeout.
STOP_WITHIN = 10.0
FAULTS = ("kill9", "sigstop", "terminate_backends", "restart")
FAULT_WEIGHTS = (3, 2, 3, 2)

CLI = str(Path(sys.executable).with_name("pgdurable"))


@dataclass
class WorkerProc:
    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    stopped_until: float | None = None  # set while SIGSTOPped
    held_when_stopped: dict[Any, int] = field(default_factory=dict)  # run id -> attempt
    killed_by_test: bool = False

    @property
    def app_name(self) -> str:
        return f"chaos-w{self.slot}-{self.generation}"


@dataclass
class Chaos:
    """The workers, the faults injected so far and what went wrong on the way."""

    server: OwnedServer
    env: dict[str, str]
    log_dir: Path
    rng: random.Random  # picks victims: its draws depend on timing, so it is not the schedule's
    workers: list[WorkerProc] = field(default_factory=list)
    retired: list[WorkerProc] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    unexpected_exits: list[str] = field(default_factory=list)
    restart_seconds: list[float] = field(default_factory=list)
    zombie_runs_taken_over: int = 0
    overdue_max: float = 0.0
    overdue_what: str = ""
    _overdue_sampled: float = 0.0

    def spawn(self, slot: int, generation: int) -> WorkerProc:
        w_env = dict(self.env)
        # libpq sends it as application_name: the test finds this worker's backends by it.
        w_env["PGAPPNAME"] = f"chaos-w{slot}-{generation}"
        log = self.log_dir / f"worker{slot}-{generation}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    CLI,
                    "worker",
                    "apps.chaos_app:app",
                    "--concurrency",
                    str(CONCURRENCY),
                    "--poll-interval",
                    "0.2",
                ],
                cwd=ROOT / "tests",
                env=w_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(slot, generation, proc, log)
        self.workers.append(worker)
        return worker

    def replace(self, worker: WorkerProc) -> None:
        self.workers.remove(worker)
        self.retired.append(worker)
        self.spawn(worker.slot, worker.generation + 1)

    def check_workers(self) -> None:
        """Note which workers are up (they LISTEN) and replace any that exited on its own."""
        for w in list(self.workers):
            rc = w.proc.poll()
            if rc is not None and not w.killed_by_test:
                self.unexpected_exits.append(
                    f"{w.app_name} exited {rc}; log {w.log}:\n{tail(w.log)}"
                )
                self.replace(w)
        pending = [w for w in self.workers if not w.ready]
        if pending:
            listening = {
                r[0]
                for r in query(
                    self.server.dsn,
                    "select application_name from pg_stat_activity "
                    "where application_name like 'chaos-w%%' and query ilike 'listen %%'",
                )
            }
            for w in pending:
                w.ready = w.app_name in listening

    def wait_all_ready(self) -> None:
        def probe() -> bool:
            self.check_workers()
            return all(w.ready or w.stopped_until is not None for w in self.workers)

        wait_until("every worker process to be up and listening", probe, timeout=20)

    def resume_due(self, now: float, everyone: bool = False) -> None:
        for w in self.workers:
            if w.stopped_until is not None and (everyone or now >= w.stopped_until):
                if w.held_when_stopped:
                    # Runs the frozen worker held that another worker took over meanwhile:
                    # whatever the zombie now writes for them must be rejected.
                    rows = query(
                        self.server.dsn,
                        "select id, attempt from pgdurable.runs where id = any(%s)",
                        (list(w.held_when_stopped),),
                    )
                    self.zombie_runs_taken_over += sum(
                        1 for run_id, attempt in rows if attempt > w.held_when_stopped[run_id]
                    )
                os.kill(w.proc.pid, signal.SIGCONT)
                w.stopped_until = None
                w.held_when_stopped = {}

    def held_runs(self) -> dict[int, dict[Any, int]]:
        """Running runs by the pid of the worker process holding them."""
        held: dict[int, dict[Any, int]] = {}
        for worker_id, run_id, attempt in query(
            self.server.dsn,
            "select worker_id, id, attempt from pgdurable.runs where status = 'running'",
        ):
            # The SDK's worker ids are host:pid:random; a format it no longer uses only makes
            # the test freeze a worker at random.
            pid = str(worker_id).split(":")[1] if str(worker_id).count(":") >= 2 else ""
            if pid.isdigit():
                held.setdefault(int(pid), {})[run_id] = attempt
        return held

    def inject(self, kind: str) -> None:
        running = [w for w in self.workers if w.stopped_until is None]
        if kind == "kill9":
            victim = self.rng.choice(running)
            victim.killed_by_test = True
            victim.proc.kill()
            victim.proc.wait(10)
            self.replace(victim)
        elif kind == "sigstop":
            # Keep at least two workers working; freeze only one that is up.
            candidates = [w for w in running if w.ready]
            if len(running) <= 2 or not candidates:
                kind = "terminate_backends"
            else:
                # Prefer a worker in the middle of runs: it becomes a zombie with work to lose.
                held = self.held_runs()
                busiest = max(len(held.get(w.proc.pid, {})) for w in candidates)
                victim = self.rng.choice(
                    [w for w in candidates if len(held.get(w.proc.pid, {})) == busiest]
                )
                os.kill(victim.proc.pid, signal.SIGSTOP)
                victim.stopped_until = time.monotonic() + STOP_FOR
                victim.held_when_stopped = held.get(victim.proc.pid, {})
        if kind == "terminate_backends":
            victim = self.rng.choice([w for w in running if w.ready] or running)
            killed = query(
                self.server.dsn,
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = %s",
                (victim.app_name,),
            )
            self.faults["backends_terminated"] += len(killed)
        elif kind == "restart":
            # A worker that has not finished starting would exit on the failed connection:
            # that is a startup error, not what this test is about.
            self.wait_all_ready()
            # Mostly crash-like; every fourth one a clean (fast) shutdown.
            done = self.faults["restart_immediate"] + self.faults["restart_fast"]
            mode = "fast" if done % 4 == 3 else "immediate"
            self.restart_seconds.append(self.server.restart(mode))
            kind = f"restart_{mode}"
        self.faults[kind] += 1

    def sample_overdue(self, phase: str) -> None:
        """Note how long the oldest due work has waited for a worker (at most twice a second)."""
        now = time.monotonic()
        if now - self._overdue_sampled < 0.5:
            return
        self._overdue_sampled = now
        rows = query(self.server.dsn, OVERDUE_SQL)
        for what, age in rows:
            if age is not None and age > self.overdue_max:
                self.overdue_max = float(age)
                self.overdue_what = f"{what} during the {phase}, faults so far {dict(self.faults)}"

    def zombie_rejections(self) -> int:
        """Writes of frozen-then-resumed workers that the fencing rejected (from their logs)."""
        total = 0
        for w in self.workers + self.retired:
            text = w.log.read_text(errors="replace") if w.log.exists() else ""
            total += text.count("lost the lease") + text.count("lease lost")
        return total

    def log_summary(self, top: int = 12) -> str:
        """The most frequent warnings and errors of all workers (ids and addresses masked)."""
        seen: Counter[str] = Counter()
        for w in self.workers + self.retired:
            text = w.log.read_text(errors="replace") if w.log.exists() else ""
            for line in text.splitlines():
                if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                    msg = re.sub(r"^[0-9-]+ [0-9:,]+ ", "", line)
                    msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", msg)
                    msg = re.sub(r"0x[0-9a-f]+|/tmp/\S+", "<..>", msg)
                    seen[msg[:160]] += 1
        return "\n".join(f"{n:5d} x {msg}" for msg, n in seen.most_common(top))

    def report(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        restarts = (
            f"; server restarts took max {max(self.restart_seconds):.2f} s"
            if self.restart_seconds
            else ""
        )
        return (
            f"seed {SEED}, {RUNS} workflows, faults: {counts}{restarts}; "
            f"worker processes started: {len(self.workers) + len(self.retired)}; "
            f"runs of frozen workers taken over meanwhile: {self.zombie_runs_taken_over}; "
            f"lease-lost reports in worker logs: {self.zombie_rejections()}; "
            f"oldest due work waited {self.overdue_max:.1f} s; "
            f"logs in {self.log_dir}"
        )

    def shutdown(self) -> list[str]:
        """SIGTERM every worker; returns those that did not exit 0 within STOP_WITHIN s."""
        self.resume_due(0, everyone=True)
        began = time.monotonic()
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        slow: list[str] = []
        for w in self.workers:
            try:
                rc = w.proc.wait(max(0.1, began + STOP_WITHIN - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(10)
                slow.append(
                    f"{w.app_name} still running {STOP_WITHIN} s after SIGTERM (killed); "
                    f"its log ends:\n{tail(w.log, 6)}"
                )
                continue
            if rc != 0:
                slow.append(f"{w.app_name} exited {rc} on SIGTERM; log {w.log}:\n{tail(w.log)}")
        return slow

    def kill_all(self) -> None:
        for w in self.workers + self.retired:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)


# Per kind of due work: how long the oldest item has been due (engine time, seconds).
OVERDUE_SQL = """
select 'a pending run', extract(epoch from pgdurable.now() - min(available_at))
  from pgdurable.runs where status = 'pending' and available_at <= pgdurable.now()
union all
select 'a timer', extract(epoch from pgdurable.now() - min(fire_at))
  from pgdurable.timers where fire_at <= pgdurable.now()
union all
select 'an expired lease', extract(epoch from pgdurable.now() - min(lease_expires_at))
  from pgdurable.runs where status = 'running' and lease_expires_at <= pgdurable.now()
"""


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def plan(rng: random.Random, n: int) -> list[tuple[str, list[str]]]:
    """Each run's operations: 3 to 7 drawn with weights, at most one event wait per run."""
    kinds = list(chaos_app.KINDS)
    weights = [3, 2, 1, 3, 2, 1, 1]
    runs: list[tuple[str, list[str]]] = []
    for i in range(n):
        ops = rng.choices(kinds, weights, k=rng.randint(3, 7))
        while ops.count("event") > 1:
            ops.remove("event")
        runs.append((f"c{i}", ops))
    return runs


def start_wave(dsn: str, app: Any, wave: list[tuple[str, list[str]]]) -> None:
    flow = app.workflows["chaos.flow"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        flow.start_many(
            [(key, ops) for key, ops in wave], workflow_ids=[key for key, _ in wave], conn=conn
        )


def emit(dsn: str, app: Any, key: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        app.emit_event(chaos_app.event_name(key), {"for": key}, conn=conn)


@pytest.mark.timeout(int(FAULT_PHASE + DRAIN + 60))
def test_chaos_loses_duplicates_and_strands_nothing(owned_pg: OwnedServer) -> None:
    dsn = owned_pg.dsn
    chaos_app.prepare(dsn)
    app = chaos_app.build(dsn)
    rng = random.Random(SEED)
    runs = plan(rng, RUNS)
    schedule = random.Random(SEED + 1)
    expected_children = sum(ops.count("child") for _, ops in runs)
    env = dict(os.environ)
    env["PGDURABLE_DSN"] = dsn
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    # Not tmp_path: pytest prunes old temporary directories of this user, and the workers' logs
    # of a failed run must stay for the post-mortem (deleted below when everything passed).
    log_dir = Path(tempfile.mkdtemp(prefix="pgdurable-chaos-"))
    chaos = Chaos(owned_pg, env, log_dir, random.Random(SEED + 2))

    # Runs start in waves over the first 60 % of the fault phase and each event is emitted at a
    # random moment after its run started, so faults always meet work in every state.
    waves = 10
    per_wave = -(-RUNS // waves)
    wave_at = [FAULT_PHASE * 0.6 * w / waves for w in range(waves)]
    emits: list[tuple[float, str]] = []
    for w in range(waves):
        for key, ops in runs[w * per_wave : (w + 1) * per_wave]:
            if "event" in ops:
                emits.append((rng.uniform(wave_at[w] + 0.5, FAULT_PHASE * 0.9), key))
    emits.sort()
    # The first four faults are one of each kind (in a seeded order), then weighted draws.
    script = list(FAULTS)
    schedule.shuffle(script)

    try:
        for slot in range(WORKERS):
            chaos.spawn(slot, 0)
        chaos.wait_all_ready()
        began = time.monotonic()
        next_fault = began + schedule.uniform(0.5, 1.5)
        started_waves = 0
        while (now := time.monotonic()) - began < FAULT_PHASE:
            elapsed = now - began
            while started_waves < waves and wave_at[started_waves] <= elapsed:
                start_wave(
                    dsn, app, runs[started_waves * per_wave : (started_waves + 1) * per_wave]
                )
                started_waves += 1
            while emits and emits[0][0] <= elapsed:
                emit(dsn, app, emits.pop(0)[1])
            chaos.resume_due(now)
            chaos.check_workers()
            chaos.sample_overdue("fault phase")
            if now >= next_fault:
                kind = script.pop(0) if script else schedule.choices(FAULTS, FAULT_WEIGHTS)[0]
                chaos.inject(kind)
                next_fault = time.monotonic() + schedule.uniform(0.5, 1.5)
            time.sleep(0.05)  # the pace of the fault loop, not a synchronisation
        for _, key in emits:
            emit(dsn, app, key)
        chaos.resume_due(0, everyone=True)
        print(f"\nchaos: {chaos.report()}")

        total = RUNS + expected_children

        def finished() -> bool:
            chaos.check_workers()
            chaos.sample_overdue("drain")
            done = query(
                dsn,
                "select count(*) from pgdurable.runs "
                "where status in ('completed', 'failed', 'cancelled')",
            )[0][0]
            return bool(done >= total)

        drained = time.monotonic()
        # A timeout is reported below, with the runs that did not finish.
        with contextlib.suppress(AssertionError):
            wait_until("every run to finish", finished, timeout=DRAIN, every=0.2)
        print(f"chaos: drained in {time.monotonic() - drained:.1f} s after the fault phase")
        # Runs still unfinished are reported below; the workers stop anyway.
        slow_stops = chaos.shutdown()
    finally:
        chaos.kill_all()

    report = chaos.report()
    print(f"chaos: {report}")
    assert chaos.unexpected_exits == [], (
        f"worker processes exited on their own ({report}):\n" + "\n".join(chaos.unexpected_exits)
    )
    check_outcome(dsn, runs, expected_children, report, chaos.log_summary())
    assert not slow_stops, (
        "workers did not stop cleanly on SIGTERM once the work was done "
        f"({report}):\n" + "\n".join(slow_stops)
    )
    assert chaos.overdue_max <= OVERDUE_LIMIT, (
        f"due work waited {chaos.overdue_max:.1f} s for a worker (limit {OVERDUE_LIMIT} s): "
        f"{chaos.overdue_what} ({report})\nworkers' most frequent warnings:\n"
        f"{chaos.log_summary()}"
    )
    if not os.environ.get("PGDURABLE_CHAOS_KEEP_LOGS"):
        shutil.rmtree(log_dir, ignore_errors=True)


def check_outcome(
    dsn: str,
    runs: list[tuple[str, list[str]]],
    expected_children: int,
    report: str,
    logs: str,
) -> None:
    rows = query(
        dsn,
        "select workflow_id, workflow_name, status, output, error, attempt, recoveries, note "
        "from pgdurable.runs",
    )
    by_key = {r[0]: r for r in rows}
    missing = [key for key, _ in runs if key not in by_key]
    assert not missing, (
        f"lost: {len(missing)} of {len(runs)} started runs have no row: {missing[:10]} ({report})"
    )
    failed = [r for r in rows if r[2] in ("failed", "cancelled")]
    assert not failed, (
        f"{len(failed)} unexpected failures ({report}), e.g.:\n"
        + "\n".join(
            f"{r[0]} {r[2]} attempt={r[5]} recoveries={r[6]} error={r[4]}" for r in failed[:10]
        )
        + f"\nworkers' most frequent warnings:\n{logs}"
    )
    stuck = [r for r in rows if r[2] != "completed"]
    assert not stuck, (
        f"{len(stuck)} runs stuck unfinished {DRAIN:.0f} s after the last fault ({report}); "
        f"by status {dict(Counter(r[2] for r in stuck))}, e.g.:\n"
        + "\n".join(
            f"{r[0]} {r[2]} attempt={r[5]} recoveries={r[6]} note={r[7]}" for r in stuck[:10]
        )
        + f"\nworkers' most frequent warnings:\n{logs}"
    )

    children = [r for r in rows if r[1] == "chaos.leaf"]
    assert len(children) == expected_children, (
        f"{len(children)} child runs exist, {expected_children} planned ({report})"
    )
    wrong = [
        (key, by_key[key][3], chaos_app.expected_result(key, ops))
        for key, ops in runs
        if by_key[key][3] != chaos_app.expected_result(key, ops)
    ]
    assert not wrong, f"{len(wrong)} runs returned the wrong result ({report}): {wrong[:5]}"

    # Exactly one application row per transaction step, written in the same transaction (hence
    # the same run attempt) as the step's checkpoint.
    expected = Counter({(key, k): 1 for key, ops in runs for k, op in enumerate(ops) if op == "tx"})
    expected.update(
        {(f"{key}/{k}", 0): 1 for key, ops in runs for k, op in enumerate(ops) if op == "child"}
    )
    effects = Counter(
        {
            (r[0], r[1]): r[2]
            for r in query(
                dsn, "select run_key, k, count(*) from chaos_effects group by run_key, k"
            )
        }
    )
    duplicated = {key: n for key, n in effects.items() if n > 1}
    absent = [key for key in expected if effects[key] == 0]
    unplanned = [key for key in effects if key not in expected]
    assert not duplicated and not absent and not unplanned, (
        f"transactional effects: {len(duplicated)} duplicated {list(duplicated.items())[:10]}, "
        f"{len(absent)} missing {absent[:10]}, {len(unplanned)} unplanned {unplanned[:10]} "
        f"({report})"
    )
    mismatched = query(
        dsn,
        "select e.run_key, e.k, e.attempt, c.run_attempt from chaos_effects e "
        "join pgdurable.runs r on r.input -> 'args' ->> 0 = e.run_key "
        "left join pgdurable.checkpoints c on c.run_id = r.id and c.kind = 'transaction' "
        "  and c.output = to_jsonb(e.k) "
        "where c.run_attempt is distinct from e.attempt",
    )
    assert not mismatched, (
        f"effects committed by another run attempt than their checkpoint ({report}): "
        f"{mismatched[:10]}"
    )

    # A zombie's checkpoint accepted after a takeover would sit after the new owner's ones with
    # an older attempt: per run, the attempt that wrote each checkpoint never goes down.
    regressions = query(
        dsn,
        "select run_id, step_key, run_attempt, previous from ("
        "  select run_id, step_key, run_attempt,"
        "         max(run_attempt) over (partition by run_id order by seq"
        "                                rows between unbounded preceding and 1 preceding)"
        "         as previous"
        "  from pgdurable.checkpoints) c where run_attempt < previous",
    )
    assert not regressions, (
        f"checkpoints written by an older attempt after a newer one ({report}): {regressions[:10]}"
    )
