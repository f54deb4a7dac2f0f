"""The engine's guarantees, each proven on purpose against the bug that would break it.

Zombies: a worker process stopped past its leases and resumed cannot checkpoint, complete or
hand back runs another worker owns. Races: worker processes on one deep backlog claim each run
once; claims never wait for each other; an event emitted while a wait begins always wakes it.
One worker, several runs: heartbeats hold every run; a cancel stops in-place retries; a lost
connection hands the run back at once. The claim's real plan (auto_explain, generic plan too)
stays on the pending-run index. Timers, lease recovery and deadlines go on while every worker
slot is busy, and every takeover of an expired lease counts toward the dead-letter cap.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgdurable
from apps import guarantee_app
from apps.flavours import FlavouredApp
from apps.guarantee_app import Spawn, worker_processes
from apps.support import (
    listeners,
    query,
    run_status,
    running_worker,
    scalar,
    shift_clock,
    wait_until,
)

ZOMBIE_WORKFLOWS = ("g.checkpoint", "g.complete", "g.handback")


# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True


@pytest.fixture
def spawn(run_subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    with worker_processes(run_subprocess_env, tmp_path) as spawn:
        yield spawn


@pytest.fixture
def guarantee(dsn: str) -> Iterator[pgdurable.App]:
    """The app of apps.guarantee_app (its tables created), as the test process's own."""
    guarantee_app.prepare(dsn)
    with guarantee_app.build(dsn) as app:
        yield app


@contextmanager
def gates_opened_on_exit(gate_dir: Path) -> Iterator[None]:
    """However the block ends, no run stays blocked at a gate (so workers can stop)."""
    try:
        yield
    finally:
        for attempt in range(1, 6):
            (gate_dir / str(attempt)).touch()


def noted(dsn: str, what: str, attempt: int, pid: int | None = None) -> set[str]:
    """The tags whose run recorded ``what`` at ``attempt`` (in process ``pid`` if given)."""
    rows = query(
        dsn,
        "select tag from guarantee_notes where what = %s and attempt = %s "
        "and (%s::integer is null or pid = %s)",
        (what, attempt, pid, pid),
    )
    return {r[0] for r in rows}


def run_rows(dsn: str, ids: list[Any]) -> dict[Any, tuple[Any, ...]]:
    """(status, attempt, worker_id, output, error) of each run."""
    rows = query(
        dsn,
        "select id, status, attempt, worker_id, output, error from pgdurable.runs "
        "where id = any(%s)",
        (ids,),
    )
    return {r[0]: r[1:] for r in rows}


def start_sql(conn: psycopg.Connection[Any], name: str, **options: Any) -> Any:
    """The id of a run started through the SQL API."""
    row = conn.execute(
        "select pgdurable.start_run(%s, '{\"args\": []}', %s)", (name, Jsonb(options))
    ).fetchone()
    assert row is not None
    return row[0]


def claim_sql(
    conn: psycopg.Connection[Any], worker: str, queue: str, limit: int, lease: float = 30
) -> list[tuple[Any, int]]:
    """(id, attempt) of the runs ``worker`` claims, as a worker's claim would."""
    rows = conn.execute(
        "select id, attempt from pgdurable.claim_runs(%s, array[%s], %s, %s)",
        (worker, queue, limit, lease),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


# --- a real zombie -------------------------------------------------------------------------------


@pytest.mark.slow
def test_zombie_resumed_after_a_takeover_cannot_checkpoint_complete_or_hand_back(
    dsn: str, guarantee: pgdurable.App, spawn: Spawn, tmp_path: Path
) -> None:
    """A worker process stopped mid-step (SIGSTOP) past its leases; another worker takes its
    three runs over and holds them; the zombie resumes (SIGCONT), is asked to stop (SIGTERM)
    and goes on from its steps: its checkpoint, its completion and its hand-back (release_run
    with its stale attempt) are all rejected, and the new owner's rows stay as they were."""
    owner_app = guarantee
    gates = tmp_path / "gates"
    gates.mkdir()
    handles = {wf: owner_app.start(wf, [wf, str(gates)]) for wf in ZOMBIE_WORKFLOWS}
    ids = [h.run_id for h in handles.values()]

    zombie = spawn(concurrency=3)
    wait_until(
        "the zombie to hold all three runs at its gate",
        lambda: noted(dsn, "started", attempt=1, pid=zombie.pid) == set(handles),
    )
    zombie.send_signal(signal.SIGSTOP)
    shift_clock(dsn, "2 minutes")  # past the zombie's 60 s leases

    with running_worker(owner_app, concurrency=3), gates_opened_on_exit(gates):
        wait_until(
            "the new owner to take all three runs over",
            lambda: noted(dsn, "started", attempt=2) == set(handles),
        )
        owned = run_rows(dsn, ids)
        assert set(owned.values()) == {("running", 2, owner_app.worker_id, None, None)}

        zombie.send_signal(signal.SIGCONT)
        zombie.send_signal(signal.SIGTERM)
        (gates / "1").touch()
        try:
            exit_code = zombie.wait(30)
        except subprocess.TimeoutExpired:
            zombie.send_signal(signal.SIGUSR2)  # its threads' stacks into its log, for the report
            time.sleep(1)
            raise
        assert exit_code == 0, "the zombie's rejected writes made its process fail"
        # It really went on: each of its runs got past the gate to its next write.
        assert noted(dsn, "resumed", attempt=1, pid=zombie.pid) == set(handles)
        assert "g.handback" in noted(dsn, "failed", attempt=1, pid=zombie.pid)

        assert run_rows(dsn, ids) == owned, "a zombie's write changed the new owner's run"
        assert scalar(dsn, "select count(*) from pgdurable.checkpoints where run_attempt = 1") == 0

        (gates / "2").touch()
        for h in handles.values():
            assert h.result(timeout=20) == "attempt 2"
    assert query(
        dsn,
        "select distinct status, attempt, recoveries from pgdurable.runs where id = any(%s)",
        (ids,),
    ) == [("completed", 2, 1)]


# --- deliberate races ----------------------------------------------------------------------------


@pytest.mark.slow
def test_three_worker_processes_on_a_deep_backlog_run_each_run_once(
    dsn: str, guarantee: pgdurable.App, spawn: Spawn
) -> None:
    """Workers racing for one queue: every run is claimed exactly once (attempt 1) and its
    step's effect, written outside any fenced transaction, happens exactly once."""
    procs = [spawn(concurrency=4) for _ in range(3)]
    wait_until("three workers to listen", lambda: listeners(dsn) == 3, timeout=30)
    # One statement: the whole backlog appears at once, under three claiming workers.
    guarantee.workflows["g.effect"].start_many([[f"r{i}"] for i in range(300)])

    wait_until(
        "the 300 runs to complete",
        lambda: _completed(dsn) == 300,
        timeout=60,
    )
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(20) for proc in procs] == [0, 0, 0]

    assert query(dsn, "select attempt, count(*) from pgdurable.runs group by attempt") == [
        (1, 300)
    ], "a run was claimed more than once"
    assert query(
        dsn,
        "select count(*), count(distinct tag), count(*) filter (where attempt <> 1) "
        "from guarantee_effects",
    ) == [(300, 300, 0)]
    busy = scalar(dsn, "select count(distinct pid) from guarantee_effects")
    assert busy >= 2, "the workers did not race for the backlog"


def test_concurrent_claims_never_wait_for_each_other_nor_share_a_run(dsn: str) -> None:
    """A claim whose transaction is still open holds its runs; a second claim takes the next
    runs at once (SKIP LOCKED) instead of waiting, and never the same ones (FOR UPDATE)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        for _ in range(10):
            start_sql(c, "race.claim")
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        mine = claim_sql(first, "first", "default", 4)
        second.execute("set lock_timeout = '3s'")
        try:
            theirs = claim_sql(second, "second", "default", 4)
        except psycopg.errors.LockNotAvailable:
            pytest.fail("a claim waited for the runs another claim holds (no SKIP LOCKED?)")
        first.commit()
        second.commit()
    assert len(mine) == len(theirs) == 4
    assert {r for r, _ in mine}.isdisjoint({r for r, _ in theirs})
    assert {a for _, a in mine + theirs} == {1}


def _completed(dsn: str) -> int:
    return int(scalar(dsn, "select count(*) from pgdurable.runs where status = 'completed'"))


def _claim_one(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        run_id = start_sql(c, "race.wait")
        assert claim_sql(c, "w", "default", 1) == [(run_id, 1)]
    return run_id


def _blocked_or_done(dsn: str, thread: threading.Thread) -> bool:
    """Whether ``thread``'s statement has finished or waits for a lock (the other side's)."""
    if not thread.is_alive():
        return True
    return bool(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and wait_event_type = 'Lock'",
        )
    )


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_event_emitted_while_a_wait_commits_wakes_the_waiter(dsn: str) -> None:
    """The worst interleaving, forced: the wait has suspended the run but not yet committed
    when the event is emitted. The emit must wait for it and then wake the run."""
    run_id = _claim_one(dsn)
    with psycopg.connect(dsn) as waiter:
        received = waiter.execute(
            "select received from pgdurable.wait_event(%s, 1, 0, 'ev', 'race:commit')",
            (run_id,),
        ).fetchone()
        assert received == (False,)

        def emit() -> Any:
            return scalar(dsn, "select pgdurable.emit_event('race:commit', '1')")

        emitter, _ = _in_thread(emit)
        wait_until("the emit to run", lambda: _blocked_or_done(dsn, emitter))
        waiter.commit()
    emitter.join(10)
    assert not emitter.is_alive()
    assert query(dsn, "select status, wait_for from pgdurable.runs where id = %s", (run_id,)) == [
        ("pending", None)
    ], "the event was emitted but its waiter was never woken"


def test_wait_beginning_while_an_emit_commits_receives_the_event(dsn: str) -> None:
    """The other order: the event is emitted but not yet committed when the wait begins. The
    wait must see it once committed (or be woken by it), never miss it."""
    run_id = _claim_one(dsn)
    with psycopg.connect(dsn) as emitter:
        emitter.execute("select pgdurable.emit_event('race:begin', '2')")

        def wait() -> Any:
            return query(
                dsn,
                "select received from pgdurable.wait_event(%s, 1, 0, 'ev', 'race:begin')",
                (run_id,),
            )[0][0]

        waiter, received = _in_thread(wait)
        wait_until("the wait to run", lambda: _blocked_or_done(dsn, waiter))
        emitter.commit()
    waiter.join(10)
    assert not waiter.is_alive()
    status = run_status(dsn, run_id)
    assert received == [True] or status == "pending", (
        f"the wait missed a committed event: received {received}, run {status}"
    )


@pytest.mark.slow
def test_hundreds_of_waits_racing_their_emits_all_wake(app: pgdurable.App, dsn: str) -> None:
    """200 runs each wait for their own event while emitter threads fire it the moment the run
    reaches its wait: no wake-up is lost."""
    tags = [f"t{i}" for i in range(200)]
    reached = {tag: threading.Event() for tag in tags}

    @app.workflow(name="race.waiter")
    def waiter(tag: str) -> Any:
        reached[tag].set()
        return pgdurable.wait_for_event(f"race:{tag}")

    def emitter(share: list[str]) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for tag in share:
                if reached[tag].wait(60):
                    c.execute("select pgdurable.emit_event(%s, %s)", (f"race:{tag}", Jsonb(tag)))

    handles = waiter.start_many([[tag] for tag in tags])
    emitters = [threading.Thread(target=emitter, args=(tags[i::4],), daemon=True) for i in range(4)]
    for t in emitters:
        t.start()
    with running_worker(app, concurrency=8, poll_interval=0.05):
        for t in emitters:
            t.join(60)
        try:
            wait_until("every waiter to complete", lambda: _completed(dsn) == len(tags), 20)
        except AssertionError:
            lost = query(
                dsn,
                "select r.workflow_id from pgdurable.runs r join pgdurable.events e "
                "on r.wait_for = 'event:' || e.name where r.status = 'waiting'",
            )
            assert lost == [], f"{len(lost)} wake-ups lost"
            raise
    assert [h.result(timeout=1) for h in handles] == tags


# --- one worker, several runs --------------------------------------------------------------------


@pytest.mark.slow
def test_heartbeat_holds_every_run_of_a_worker_against_a_thief(dsn: str, flavour: str) -> None:
    """Three runs on one worker with a 1 s lease, each in a step lasting four leases, while a
    thief claims in a loop: the heartbeat extends all of them, so none is taken over."""
    release = threading.Event()
    thefts: list[tuple[Any, int]] = []
    with FlavouredApp(dsn, flavour=flavour, lease=1.0) as app:

        @app.step()
        def long_step(tag: str) -> str:
            release.wait(30)
            return tag

        @app.workflow(name="hb.long")
        def flow(tag: str) -> str:
            return long_step(tag)

        handles = [flow.start(f"h{i}") for i in range(3)]
        with running_worker(app, concurrency=3):
            try:
                wait_until(
                    "the worker to hold all three runs",
                    lambda: (
                        scalar(dsn, "select count(*) from pgdurable.runs where status = 'running'")
                        == 3
                    ),
                )
                with psycopg.connect(dsn, autocommit=True) as thief:
                    end = time.monotonic() + 4 * app.lease  # real time: leases must lapse
                    while time.monotonic() < end and not thefts:
                        thefts.extend(claim_sql(thief, "thief", "default", 10))
                        time.sleep(0.05)
            finally:
                release.set()
            assert thefts == [], "a run the worker was executing was taken over"
            results = [h.result(timeout=20) for h in handles]
    assert results == ["h0", "h1", "h2"]
    assert query(dsn, "select distinct attempt, recoveries from pgdurable.runs") == [(1, 0)]


def test_cancel_during_in_place_retries_stops_further_attempts(dsn: str, flavour: str) -> None:
    """A step failing again and again, retried in place; a cancel request reaches the worker
    with its heartbeat and the retries stop long before the policy is exhausted."""
    max_attempts = 50
    query(dsn, "create table tries (at timestamptz not null default clock_timestamp())")

    def tries() -> int:
        return int(scalar(dsn, "select count(*) from tries"))

    with FlavouredApp(dsn, flavour=flavour, lease=0.6) as app:

        @app.step(
            retry=pgdurable.Retry(
                max_attempts=max_attempts, initial_delay=0.05, backoff=1, jitter=False
            )
        )
        def always_fails() -> None:
            query(dsn, "insert into tries default values")
            raise RuntimeError("down")

        @app.workflow(name="cancel.retrying")
        def flow() -> None:
            always_fails()

        handle = flow.start()
        with running_worker(app, concurrency=1):
            wait_until("a few attempts", lambda: tries() >= 3)
            assert handle.cancel() == "cancelling"
            with pytest.raises(pgdurable.RunCancelled):
                handle.result(timeout=20)
            at_cancelled = tries()
    assert tries() == at_cancelled, "attempts went on after the run ended cancelled"
    assert at_cancelled < max_attempts, "the cancel did not stop the in-place retries"
    assert query(
        dsn, "select status, error ->> 'type' from pgdurable.runs where id = %s", (handle.run_id,)
    ) == [("cancelled", "Cancelled")]
    assert scalar(dsn, "select count(*) from pgdurable.checkpoints") == 0


def _terminate_backends_running(dsn: str, statement: str) -> int:
    return int(
        scalar(
            dsn,
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid() and query like %s",
            (f"%{statement}%",),
        )
    )


def _kill_the_runs_connection(dsn: str, flavour: str) -> None:
    """A sync run holds its connection through the step: exactly that one dies. An async run
    holds none while a step runs, so every connection of the worker's async pool dies (the
    one it will take next included)."""
    if flavour == "sync":
        assert _terminate_backends_running(dsn, "pgdurable.record_checkpoint") == 1
    else:
        assert _terminate_backends_running(dsn, "pgdurable.") >= 1


def test_lost_connection_hands_the_run_back_at_once(dsn: str, flavour: str) -> None:
    """The run's connection dies while a step executes. The run is handed back at once (not
    after its 30 s lease), without a crash recovery, with the reason in its note and counted
    in ``disconnects``; another attempt completes it."""
    entered = {1: threading.Event(), 2: threading.Event()}
    proceed = {1: threading.Event(), 2: threading.Event()}
    with FlavouredApp(dsn, flavour=flavour, lease=30.0) as app:

        @app.step()
        def first() -> str:
            return "first"

        @app.step()
        def second() -> int:
            run = pgdurable.current_run()
            assert run is not None
            entered[run.attempt].set()
            proceed[run.attempt].wait(30)
            return run.attempt

        @app.workflow(name="conn.lost")
        def flow() -> list[Any]:
            return [first(), second()]

        handle = flow.start()
        with running_worker(app, concurrency=1):
            try:
                assert entered[1].wait(15), "the run did not reach its second step"
                _kill_the_runs_connection(dsn, flavour)
                proceed[1].set()
                assert entered[2].wait(10), "the run was not handed back after the lost connection"
                ((status, attempt, recoveries, disconnects, note),) = query(
                    dsn,
                    "select status, attempt, recoveries, disconnects, note from pgdurable.runs",
                )
                assert (status, attempt, recoveries, disconnects) == ("running", 2, 0, 1)
                assert note.startswith("connection lost: "), note
                proceed[2].set()
                assert handle.result(timeout=15) == ["first", 2]
            finally:
                for event in proceed.values():
                    event.set()
    assert query(dsn, "select attempt, recoveries from pgdurable.runs") == [(2, 0)]


# --- the claim's real plan -----------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _plan_nodes(child)


def _executed_plans(conn: psycopg.Connection[Any], sql: str, params: Any) -> list[dict[str, Any]]:
    """The plans (auto_explain, JSON) of every statement executed by ``sql``, nested ones
    included: the plans PL/pgSQL really runs, not an EXPLAIN of a copy of their text."""
    notices: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    conn.execute("load 'auto_explain'")
    for name, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_format", "json"),
        ("auto_explain.log_level", "notice"),
        ("client_min_messages", "notice"),
    ):
        conn.execute("select set_config(%s, %s, true)", (name, value))
    conn.add_notice_handler(on_notice)
    try:
        conn.execute(sql, params)
    finally:
        conn.remove_notice_handler(on_notice)
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    assert plans, f"auto_explain logged nothing: {notices}"
    return plans


def _pending_indexes(conn: psycopg.Connection[Any]) -> set[str]:
    """The indexes of runs restricted to pending runs, found by their predicate."""
    rows = conn.execute(
        "select c.relname from pg_index i join pg_class c on c.oid = i.indexrelid "
        "where i.indrelid = 'pgdurable.runs'::regclass "
        "and pg_get_expr(i.indpred, i.indrelid) like '%status = ''pending''%'"
    ).fetchall()
    return {r[0] for r in rows}


def _seed_claim_backlog(conn: psycopg.Connection[Any], queue: str) -> None:
    """20k finished runs and 5k pending ones on ``queue``, 2k pending elsewhere, analyzed."""
    conn.execute(
        """
        insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input,
                                    attempt, available_at, created_at, updated_at, finished_at)
        select gen_random_uuid(), 'seed-' || g, 'plan.flow', q, s, '{}', a,
               now() - interval '1 day', now(), now(), case when s = 'completed' then now() end
          from generate_series(1, 27000) g,
               lateral (select case when g <= 20000 then 'completed' else 'pending' end as s,
                               case when g <= 20000 then 1 else 0 end as a,
                               case when g > 25000 then 'plan-other' else %s end as q) v
        """,
        (queue,),
    )
    conn.execute("analyze pgdurable.runs")


def _sorts_before_limit(plan: dict[str, Any], pending: set[str]) -> bool:
    """Whether a Sort reads a pending-run scan with no Limit in between: the whole backlog
    sorted. (A Sort of the few heads each per-queue Limit returns is fine.)"""

    def walk(node: dict[str, Any], above: list[str]) -> bool:
        if node.get("Index Name") in pending:
            for kind in reversed(above):
                if kind == "Limit":
                    return False
                if kind in ("Sort", "Incremental Sort"):
                    return True
            return False
        return any(walk(child, [*above, node["Node Type"]]) for child in node.get("Plans", ()))

    return walk(plan, [])


@pytest.mark.parametrize(
    "workflows", [["plan.flow"], ["plan.flow", "plan.other"]], ids=["one", "several"]
)
def test_claim_runs_itself_scans_pending_runs_on_their_index_without_sorting(
    conn: psycopg.Connection[Any], workflows: list[str]
) -> None:
    """The pending-run scan inside claim_runs, observed as it executes (custom and generic
    plans) with the arguments a worker passes (its queue and its workflows): it reads the
    partial index on pending runs in order and never sorts the backlog, so a deep backlog or
    history never makes each claim read and sort all of it."""
    queue = f"plan-{uuid.uuid4().hex[:8]}"
    _seed_claim_backlog(conn, queue)
    pending = _pending_indexes(conn)
    assert pending, "no index of pgdurable.runs is restricted to status = 'pending'"
    call = (
        "select id from pgdurable.claim_runs(p_worker_id => 'w', p_queues => %s, "
        "p_limit => 10, p_workflows => %s)"
    )
    if not _has_auto_explain(conn):
        # A server without the contrib modules (pgserver, the former embedded default): the
        # statistics counters of this transaction prove the same on the function itself.
        _assert_claims_read_only_heads(conn, call, ([queue], workflows), pending)
        return
    for mode in ("force_generic_plan", "force_custom_plan"):
        conn.execute("select set_config('plan_cache_mode', %s, true)", (mode,))
        plans = _executed_plans(conn, call, ([queue], workflows))
        claims = [
            p for p in plans if any(n.get("Index Name") in pending for n in _plan_nodes(p["Plan"]))
        ]
        assert claims, f"{mode}: no statement of claim_runs used {pending}: {plans}"
        for p in claims:
            assert not _sorts_before_limit(p["Plan"], pending), f"{mode}: sorts the backlog: {p}"
            if mode == "force_generic_plan":
                conds = " ".join(str(n.get("Index Cond", "")) for n in _plan_nodes(p["Plan"]))
                assert "$" in conds, f"not a generic plan: {p}"
        for p in plans:
            for n in _plan_nodes(p["Plan"]):
                assert not (n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "runs"), (
                    f"{mode}: a statement of claim_runs reads every run: {p}"
                )


def _has_auto_explain(conn: psycopg.Connection[Any]) -> bool:
    conn.execute("savepoint probe")
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        conn.execute("rollback to savepoint probe")
        return False
    conn.execute("release savepoint probe")
    return True


def _xact_reads(conn: psycopg.Connection[Any], indexes: set[str]) -> tuple[int, int, int]:
    """(scans of ``indexes``, index entries they returned, sequential scans of runs) so far in
    this transaction, from PostgreSQL's per-transaction statistics counters."""
    row = conn.execute(
        "select coalesce(sum(pg_stat_get_xact_numscans(c.oid)), 0),"
        "       coalesce(sum(pg_stat_get_xact_tuples_returned(c.oid)), 0),"
        "       (select seq_scan from pg_stat_xact_user_tables"
        "         where relid = 'pgdurable.runs'::regclass)"
        "  from pg_class c"
        " where c.relname = any(%s) and c.relnamespace = 'pgdurable'::regnamespace",
        (sorted(indexes),),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2] or 0)


def _assert_claims_read_only_heads(
    conn: psycopg.Connection[Any], call: str, params: Any, pending: set[str]
) -> None:
    """claim_runs, executed (generic and custom plans), scans the pending index, reads about
    as many entries as it claims (an unordered scan feeding a sort would read the whole
    5,000-run backlog) and never scans the runs table sequentially."""
    for mode in ("force_generic_plan", "force_custom_plan"):
        conn.execute("select set_config('plan_cache_mode', %s, true)", (mode,))
        scans, read, seq = _xact_reads(conn, pending)
        claimed = conn.execute(call, params).fetchall()
        scans2, read2, seq2 = _xact_reads(conn, pending)
        assert len(claimed) == 10, claimed
        assert scans2 > scans, f"{mode}: claim_runs did not scan {pending}"
        assert read2 - read <= 50, f"{mode}: read {read2 - read} index entries to claim 10"
        assert seq2 == seq, f"{mode}: claim_runs scanned pgdurable.runs sequentially"


def test_claim_runs_reads_only_the_heads_of_its_backlog(conn: psycopg.Connection[Any]) -> None:
    """The same property as the plan test, on any server (no auto_explain needed): measured by
    the statistics counters while claim_runs itself runs."""
    queue = f"plan-{uuid.uuid4().hex[:8]}"
    _seed_claim_backlog(conn, queue)
    pending = _pending_indexes(conn)
    call = (
        "select id from pgdurable.claim_runs(p_worker_id => 'w', p_queues => %s, "
        "p_limit => 10, p_workflows => %s)"
    )
    _assert_claims_read_only_heads(conn, call, ([queue], ["plan.flow", "plan.other"]), pending)


# --- maintenance while every slot is busy --------------------------------------------------------


def test_timers_leases_and_deadlines_are_processed_while_every_slot_is_busy(
    dsn: str, flavour: str
) -> None:
    """A worker's only slot is held by a long step. Meanwhile a sleep's timer comes due, a dead
    worker's lease lapses and a run passes its deadline: all three are processed within
    seconds, though the busy worker cannot claim anything."""
    blocker_in = threading.Event()
    blocker_go = threading.Event()
    with FlavouredApp(dsn, flavour=flavour, lease=60.0) as app:

        @app.step()
        def hold() -> None:
            blocker_in.set()
            blocker_go.wait(60)

        @app.workflow(name="busy.blocker")
        def blocker() -> str:
            hold()
            return "done"

        @app.workflow(name="busy.sleeper")
        def sleeper(seconds: float) -> str:
            pgdurable.sleep(seconds)
            return "woke"

        nap = sleeper.start(5)
        endless = sleeper.options(timeout=8).start(3600)
        with psycopg.connect(dsn, autocommit=True) as c:
            orphan = start_sql(c, "busy.orphan", queue="busy-elsewhere")
            assert claim_sql(c, "dead-worker", "busy-elsewhere", 1, lease=1) == [(orphan, 1)]

        with running_worker(app, concurrency=1, async_concurrency=1):
            try:
                wait_until(
                    "both sleepers to sleep",
                    lambda: (
                        run_status(dsn, nap.run_id) == run_status(dsn, endless.run_id) == "sleeping"
                    ),
                )
                busy = blocker.start()
                assert blocker_in.wait(15)
                shift_clock(dsn, "10 seconds")

                def states() -> dict[str, tuple[Any, ...]]:
                    rows = query(
                        dsn,
                        "select id, status, recoveries, error ->> 'type' from pgdurable.runs",
                    )
                    return {str(r[0]): r[1:] for r in rows}

                expected = {
                    str(nap.run_id): ("pending", 0, None),
                    str(endless.run_id): ("failed", 0, "pgdurable.DeadlineExceeded"),
                    str(orphan): ("pending", 1, None),
                    str(busy.run_id): ("running", 0, None),
                }
                try:
                    wait_until("the busy worker to process them", lambda: states() == expected, 5)
                except AssertionError:
                    assert states() == expected
                    raise
            finally:
                blocker_go.set()
            assert busy.result(timeout=15) == "done"
            assert nap.result(timeout=15) == "woke"


def test_claim_run_taking_over_an_expired_lease_counts_a_recovery(
    conn: psycopg.Connection[Any],
) -> None:
    """The direct in-process claim of one run (a workflow called as a function) may take over
    a lapsed lease, but it counts the recovery and respects the dead-letter cap like any
    other takeover."""
    queue = f"direct-{uuid.uuid4().hex[:8]}"
    run_id = start_sql(conn, "direct.flow", queue=queue, max_recoveries=1)
    assert claim_sql(conn, "dead-worker", queue, 1, lease=1) == [(run_id, 1)]

    def take(worker: str) -> list[tuple[Any, ...]]:
        conn.execute("select pgdurable.shift_clock('1 minute')")
        return conn.execute(
            "select id, attempt from pgdurable.claim_run(%s, %s, 30)", (run_id, worker)
        ).fetchall()

    def state() -> tuple[Any, ...] | None:
        return conn.execute(
            "select status, attempt, recoveries, error ->> 'type' from pgdurable.runs "
            "where id = %s",
            (run_id,),
        ).fetchone()

    assert take("direct-1") == [(run_id, 2)]
    assert state() == ("running", 2, 1, None)
    assert take("direct-2") == [], "a run past its recovery cap was taken over again"
    assert state() == ("failed", 2, 2, "DeadLettered")
