"""Flow control: queue limits that hold exactly across worker processes, crashes and lease
expiry; pause and resume; per-key limits and FIFO; rate limits; deduplication."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

import pgdurable
from apps import flow_app
from apps.support import query, running_worker, scalar, shift_clock, spawn_workers, wait_until
from pgdurable_cli.main import cli

# Each test runs with its workflows as written and as their async twins (conftest.py).
BOTH_FLAVOURS = True

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(run_subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    env = dict(run_subprocess_env, FLOW_LEASE="2")
    with spawn_workers("apps.flow_app", env, tmp_path) as start:
        yield start


# A zombie: an execution still running after its run was taken over (its lease lapsed while
# its worker was alive but stalled, e.g. on an overloaded host). It holds no lease, so the
# engine does not count it, and it cannot checkpoint; the limits bound leased attempts.
_LEASED = (
    "select * from fc_log l where not exists (select from fc_log later where later.run_id = "
    "l.run_id and later.attempt > l.attempt and later.started < coalesce(l.ended, 'infinity'))"
)


def zombies(dsn: str) -> int:
    return int(
        scalar(dsn, f"select count(*) from fc_log where id not in (select id from ({_LEASED}) z)")
    )


def max_overlap(dsn: str, queue: str, per_key: bool = False) -> int:
    """The most step executions of ``queue`` (of one key) holding their lease at one instant."""
    same_key = "and b.key is not distinct from a.key" if per_key else ""
    return int(
        scalar(
            dsn,
            f"with l as ({_LEASED}) "
            "select coalesce(max(n), 0) from (select a.id, count(*) as n from l a "
            "join l b on b.queue = a.queue and b.started <= a.started "
            f"and coalesce(b.ended, 'infinity') > a.started {same_key} "
            "where a.queue = %s group by a.id) x",
            (queue,),
        )
    )


def max_claims_per_window(dsn: str, queue: str, window: timedelta) -> int:
    """The most claims of ``queue`` in any window of length ``window`` (windows starting at a
    claim hold the most)."""
    return int(
        scalar(
            dsn,
            "select coalesce(max(n), 0) from (select a.id, count(*) as n from fc_log a "
            "join fc_log b on b.queue = a.queue and b.claimed_at >= a.claimed_at "
            "and b.claimed_at < a.claimed_at + %s where a.queue = %s group by a.id) x",
            (window, queue),
        )
    )


@pytest.mark.slow
def test_limits_hold_across_four_worker_processes_through_kills_and_lease_expiry(
    dsn: str, spawn: Spawn
) -> None:
    """4 processes x 8 slots on a queue limited to 3, a queue limited to 2 per key and a queue
    limited to 5 claims a second. A worker is killed (-9) while it runs steps; its runs come
    back when their leases expire. Every run's step logs when it ran, from inside the run."""
    flow_app.prepare(dsn)
    app = flow_app.build(dsn)
    handles = []
    for i in range(45):
        handles.append(app.start("fc.job", [flow_app.LIMITED, None, 150], queue=flow_app.LIMITED))
        key = f"k{i % 3}"
        handles.append(
            app.start(
                "fc.job", [flow_app.KEYED, key, 150], queue=flow_app.KEYED, concurrency_key=key
            )
        )
    for _ in range(20):
        handles.append(app.start("fc.job", [flow_app.RATED, None, 10], queue=flow_app.RATED))
    workers = [spawn(8) for _ in range(4)]
    wait_until("some steps to run", lambda: scalar(dsn, "select count(*) from fc_log") >= 20, 30)
    # kill the worker that is inside the most steps right now
    (victim_pid,) = query(
        dsn,
        "select pid from fc_log where ended is null group by pid order by count(*) desc limit 1",
    )[0]
    victim = next(w for w in workers if w.pid == victim_pid)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    killed = query(
        dsn,
        "update fc_log set ended = clock_timestamp() where pid = %s and ended is null returning id",
        (victim_pid,),
    )
    spawn(8)
    for h in handles:
        assert h.result(timeout=90) in (flow_app.LIMITED, flow_app.KEYED, flow_app.RATED)

    assert killed, "the victim was inside a step when it was killed"
    assert scalar(dsn, "select count(*) from pgdurable.runs where recoveries > 0") >= len(killed)
    assert max_overlap(dsn, flow_app.LIMITED) == flow_app.CONCURRENCY, f"zombies: {zombies(dsn)}"
    assert max_overlap(dsn, flow_app.KEYED, per_key=True) == flow_app.KEY_CONCURRENCY
    assert max_overlap(dsn, flow_app.KEYED) > flow_app.KEY_CONCURRENCY, "keys ran side by side"
    assert max_claims_per_window(dsn, flow_app.RATED, timedelta(seconds=1)) == flow_app.RATE.count
    app.close()


def test_a_paused_queue_is_not_claimed_until_resumed(app: pgdurable.App) -> None:
    @app.workflow(name="fc.paused", queue="fc.p")
    def flow() -> str:
        return "done"

    with app.connect() as conn:
        assert conn.execute("select pgdurable.pause_queue('fc.p')").fetchone() == (0,)
    h = flow.start()
    with running_worker(app, poll_interval=0.05):
        time.sleep(0.5)
        assert h.status() == "pending"
        with app.connect() as conn:
            conn.execute("select pgdurable.resume_queue('fc.p')")
        assert h.result(timeout=10) == "done"
    with app.connect() as conn, pytest.raises(psycopg.Error, match="has no settings"):
        conn.execute("select pgdurable.resume_queue('fc.never')")


def test_per_key_fifo_starts_a_keys_runs_in_start_order(app: pgdurable.App) -> None:
    app.queue("fc.fifo", key_fifo=True)
    order: list[int] = []

    @app.workflow(name="fc.ordered", queue="fc.fifo")
    def flow(n: int) -> int:
        order.append(n)
        return n

    # higher priority would jump the line, were it not FIFO within the key
    handles = [flow.options(concurrency_key="customer-1", priority=n).start(n) for n in range(6)]
    with running_worker(app, concurrency=4, poll_interval=0.05):
        assert [h.result(timeout=15) for h in handles] == list(range(6))
    assert order == list(range(6))


def test_a_direct_call_respects_the_queues_limit(app: pgdurable.App) -> None:
    app.queue("fc.direct", concurrency=0)
    app.configure_queues()

    @app.workflow(name="fc.direct_call", queue="fc.direct")
    def flow() -> str:
        return "ran"

    h = flow.options(workflow_id="d-1").start()
    with app.connect() as conn:
        claimed = conn.execute(
            "select * from pgdurable.claim_run(%s, 'me', 30)", (h.run_id,)
        ).fetchall()
    assert claimed == [], "a queue limited to 0 lets nothing run, a direct call included"
    assert h.status() == "pending"


def test_dedup_key_returns_the_unfinished_run_then_starts_anew(app: pgdurable.App) -> None:
    @app.workflow(name="fc.dedup")
    def flow(n: int) -> int:
        pgdurable.sleep(60)
        return n

    first = flow.options(dedup_key="sync-customer-7").start(1)
    again = flow.options(dedup_key="sync-customer-7").start(2)
    other_queue = flow.options(dedup_key="sync-customer-7", queue="fc.other").start(3)
    assert again.run_id == first.run_id
    assert other_queue.run_id != first.run_id, "dedup is per queue"
    with running_worker(app, poll_interval=0.05):
        wait_until("the run to sleep", lambda: first.status() == "sleeping")
        assert flow.options(dedup_key="sync-customer-7").start(4).run_id == first.run_id
        shift_clock(app.dsn, "2 minutes")
        assert first.result(timeout=10) == 1
        later = flow.options(dedup_key="sync-customer-7").start(5)
        assert later.run_id != first.run_id, "a finished run no longer holds its key"
    assert scalar(app.dsn, "select count(*) from pgdurable.runs where dedup_key is not null") == 3


def test_bad_limits_and_keys_are_refused_with_what_to_do(app: pgdurable.App) -> None:
    for kwargs, message in (
        ({"concurrency": -1}, "concurrency must be from 0"),
        ({"key_concurrency": 0}, "key_concurrency must be from 1"),
        ({"rate_limit": (5, 60)}, "rate_limit must be a pgdurable.Rate"),
        ({"key_fifo": "yes"}, "key_fifo must be a bool"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            app.queue("fc.bad", **kwargs)
    with pytest.raises(ValueError, match="Rate count must be from 1"):
        pgdurable.Rate(0, per=timedelta(seconds=1))
    with pytest.raises(ValueError, match="Rate per"):
        pgdurable.Rate(5, per=timedelta(0))

    @app.workflow(name="fc.keys")
    def flow() -> None:
        return None

    with pytest.raises(ValueError, match="concurrency_key must be 1 to 500"):
        flow.options(concurrency_key="")
    with pytest.raises(TypeError, match="dedup_key must be a string"):
        flow.options(dedup_key=7)  # type: ignore[arg-type]
    with app.connect() as conn:
        for sql, state in (
            ("select pgdurable.configure_queue('fc.x', -1)", "PD004"),
            ("select pgdurable.configure_queue('fc.x', 1, 1, false, 5, null)", "PD004"),
            ("select pgdurable.configure_queue('bad name!')", "PD004"),
            ("select pgdurable.start_run('fc.keys', '{}', '{\"dedup_key\": 5}')", "PD004"),
            ("select pgdurable.start_run('fc.keys', '{}', '{\"concurrency_key\": \"\"}')", "PD004"),
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert info.value.sqlstate == state, sql
    assert scalar(app.dsn, "select count(*) from pgdurable.queues") == 0, "nothing half-written"
    assert scalar(app.dsn, "select count(*) from pgdurable.runs") == 0


def test_a_keyed_run_puts_its_queue_under_per_key_limits_shown_in_the_overview(
    app: pgdurable.App,
) -> None:
    @app.workflow(name="fc.overview", queue="fc.o")
    def flow() -> None:
        return None

    flow.options(concurrency_key="a").start()
    flow.options(concurrency_key="a").start()
    rows = query(
        app.dsn,
        "select queue_name, key_concurrency, pending, running, configured "
        "from pgdurable.queue_overview where queue_name = 'fc.o'",
    )
    assert rows == [("fc.o", 1, 2, 0, True)]
    with app.connect() as conn:
        claimed = conn.execute(
            "select id from pgdurable.claim_runs('w', array['fc.o'], 10, 30, array['fc.overview'])"
        ).fetchall()
        assert len(claimed) == 1, "one run per key at a time by default"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("select pgdurable.reset_queue('fc.o')")
        assert info.value.sqlstate == "PD006"


def test_a_claim_on_a_limited_queue_reads_its_heads_on_the_claim_index(
    app: pgdurable.App,
) -> None:
    """20,000 pending runs on a limited queue: a claim takes its 4 and the query that picks them
    (the one _limited_claim runs per workflow) walks runs_claim_idx in order, without sorting."""
    with app.connect() as c:
        c.execute("select pgdurable.configure_queue('fc.big', 5)")
        c.execute(
            "insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, "
            "input, available_at, created_at, updated_at) "
            "select gen_random_uuid(), 'b' || g, 'fc.big_flow', 'fc.big', 'pending', "
            '\'{"args": [], "kwargs": {}}\', now(), now(), now() '
            "from generate_series(1, 20000) g"
        )
        c.execute("analyze pgdurable.runs")
        rows = c.execute(
            "select id from pgdurable.claim_runs('w', array['fc.big'], 4, 30, array['fc.big_flow'])"
        ).fetchall()
        plan = "\n".join(
            r[0]
            for r in c.execute(
                "explain select r.id from pgdurable.runs r where r.status = 'pending' "
                "and r.queue_name = 'fc.big' and r.workflow_name = 'fc.big_flow' "
                "and r.available_at <= now() order by r.priority desc, r.available_at limit 116 "
                "for update skip locked"
            ).fetchall()
        )
    assert len(rows) == 4
    assert "runs_claim_idx" in plan and "Sort" not in plan, plan


def test_the_queues_command_configures_lists_pauses_drains_and_resets(dsn: str) -> None:
    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["queues", *args, "--dsn", dsn], catch_exceptions=False)

    assert run("configure", "emails", "--concurrency", "10", "--rate", "100/1m").exit_code == 0
    assert run("configure", "emails", "--key-fifo", "--key-rate", "5/1s").exit_code == 0
    assert query(
        dsn,
        "select concurrency, key_concurrency, key_fifo, rate_count, rate_period, key_rate_count, "
        "key_rate_period, paused from pgdurable.queues",
    ) == [(10, 1, True, 100, timedelta(minutes=1), 5, timedelta(seconds=1), False)]
    listing = CliRunner().invoke(cli, ["queues", "--dsn", dsn, "--json"], catch_exceptions=False)
    (row,) = json.loads(listing.stdout)
    assert (row["queue_name"], row["concurrency"], row["paused"]) == ("emails", 10, False)
    assert "100/1m" in run().stdout
    assert run("configure", "emails", "--no-concurrency-limit", "--rate", "none").exit_code == 0
    assert query(dsn, "select concurrency, rate_count, key_rate_count from pgdurable.queues") == [
        (None, None, 5)
    ]
    assert run("pause", "emails").stdout == "queue emails: paused (0 of its runs still running)\n"
    assert run("drain", "emails").stdout.endswith("drained (paused, nothing running)\n")
    assert run("resume", "emails").exit_code == 0
    assert run("reset", "emails").stdout == "queue emails: reset\n"
    assert scalar(dsn, "select count(*) from pgdurable.queues") == 0

    bad = CliRunner().invoke(cli, ["queues", "configure", "emails", "--dsn", dsn, "--rate", "5"])
    assert bad.exit_code == 2 and "is not a rate: use COUNT/DURATION" in bad.output
    missing = CliRunner().invoke(cli, ["queues", "resume", "nope", "--dsn", dsn])
    assert missing.exit_code == 1 and "has no settings" in missing.output


def test_debounced_starts_collapse_into_one_run_with_the_latest_arguments(
    app: pgdurable.App,
) -> None:
    seen: list[str] = []

    @app.workflow(name="fc.reindex")
    def reindex(doc: str) -> str:
        seen.append(doc)
        return doc

    def start(doc: str) -> pgdurable.RunHandle[str]:
        opts = {"debounce": timedelta(seconds=30), "debounce_key": "doc-index"}
        return reindex.options(debounce_max_wait=timedelta(minutes=2), **opts).start(doc)

    handles = [start(f"v{i}") for i in range(5)]
    assert len({h.run_id for h in handles}) == 1, "five starts, one run"
    due = scalar(app.dsn, "select available_at - pgdurable.now() from pgdurable.runs")
    assert timedelta(seconds=29) < due <= timedelta(seconds=30)
    # every start moves the run's start back, but never past the first start + max wait
    for _ in range(6):
        shift_clock(app.dsn, "25 seconds")
        assert start("v-late").run_id == handles[0].run_id
    capped = scalar(
        app.dsn,
        "select available_at = debounce_until and debounce_until is not null from pgdurable.runs",
    )
    assert capped, "the window is capped by debounce_max_wait"
    # past debounce_until now (150 s after the first start), the run is due
    with running_worker(app, poll_interval=0.05):
        assert handles[0].result(timeout=10) == "v-late"
        after = start("v-next")
        assert after.run_id != handles[0].run_id, "a started run collects no more starts"
    assert seen == ["v-late"]
    with pytest.raises(ValueError, match="debounce and debounce_key go together"):
        reindex.options(debounce=5)
    with pytest.raises(ValueError, match="takes no workflow_id"):
        reindex.options(debounce=5, debounce_key="k", workflow_id="w-1")
    with app.connect() as conn, pytest.raises(psycopg.Error) as info:
        conn.execute("select pgdurable.start_run('fc.reindex', '{}', '{\"debounce\": 5}')")
    assert info.value.sqlstate == "PD004"


def test_a_dedup_hit_gives_the_handle_of_the_run_it_found(app: pgdurable.App) -> None:
    @app.workflow(name="fc.first")
    def first() -> None:
        return None

    @app.workflow(name="fc.second")
    def second() -> None:
        return None

    original = first.options(workflow_id="order-9", dedup_key="customer-9").start()
    found = second.options(dedup_key="customer-9").start()
    assert (found.run_id, found.workflow_id, found.workflow_name) == (
        original.run_id,
        "order-9",
        "fc.first",
    )
    # debounce is per workflow: another workflow's starts never change this one's arguments
    a = first.options(debounce=60, debounce_key="k").start()
    b = second.options(debounce=60, debounce_key="k").start()
    assert a.run_id != b.run_id
    with pytest.raises(ValueError, match="invalid queue name 'a<b'"):
        app.queue("a<b")


def test_a_batch_start_is_one_insert_in_order_and_idempotent(app: pgdurable.App) -> None:
    @app.workflow(name="fc.batch", queue="fc.bulk")
    def batch(n: int) -> int:
        return n * 2

    @app.workflow(name="fc.other")
    def other() -> None:
        return None

    other.options(workflow_id="taken-by-other").start()
    before = batch.start_many([(0,)], workflow_ids=["k-0"])
    ids = [f"k-{i}" for i in range(500)]
    handles = batch.start_many([(i,) for i in range(500)], workflow_ids=ids, priority=3)
    assert [h.workflow_id for h in handles] == ids
    assert handles[0].run_id == before[0].run_id, "an existing workflow id returns its run"
    assert query(
        app.dsn,
        "select priority, count(*), min(queue_name) from pgdurable.runs "
        "where workflow_name = 'fc.batch' group by 1 order by 1",
    ) == [(0, 1, "fc.bulk"), (3, 499, "fc.bulk")], "the existing k-0 kept its own priority"
    uuid_key = "7b0c1e32-9d8f-4c57-8e0a-5c2b7d9e1f00"
    dup = batch.start_many([(1,), (2,), (3,)], workflow_ids=["twice", "twice", uuid_key.upper()])
    assert dup[0].run_id == dup[1].run_id, "one workflow id twice in a batch: one run"
    assert str(dup[2].run_id) == uuid_key, "a uuid-shaped workflow id is the run id"
    # all or nothing: a bad input, or another workflow's id, writes no run of the batch
    count = "select count(*) from pgdurable.runs"
    total = scalar(app.dsn, count)
    with app.connect() as conn:
        for inputs, ids2, state, text in (
            (['{"args": [1]}', '{"args": 2}'], None, "PD003", "start 2"),
            (['{"args": [1]}', '{"args": [2]}'], ["fresh", "taken-by-other"], "PD007", "fc.other"),
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(
                    "select pgdurable.start_runs('fc.batch', %s::jsonb[], '{}', %s)", (inputs, ids2)
                )
            assert info.value.sqlstate == state and text in str(info.value)
    assert scalar(app.dsn, count) == total
    with running_worker(app, queues=["fc.bulk"], poll_interval=0.05):
        assert [h.result(timeout=30) for h in handles[:5]] == [0, 2, 4, 6, 8]
