"""The flow-control workloads of the benchmark (docs/flow-control.md).

CL: claim latency of a configured queue against an unconfigured one. A scratch database of its
own gets 1,000,000 finished runs and 100,000 pending runs in each of two queues, ``limited``
(configured with a concurrency limit that never binds, so both paths take the same runs) and
``free`` (no settings), generated set-based with ``INSERT ... SELECT generate_series``. One
connection then claims one run at a time, alternating between the queues (the order swapped
every pair), with a prepared ``claim_runs`` and completes each claimed run untimed, so neither
queue accumulates running runs. Figures: median and p95 per side and their ratio; the buffers a
claim touches on each path (``EXPLAIN (ANALYZE, BUFFERS)`` of ``claim_runs``, nested statements
included); the plans PL/pgSQL really uses inside the claim (``auto_explain`` of the nested
statements, sent back to the client as notices), checked to read the pending runs from
``runs_claim_idx``; and the same alternation once 1,000 runs of each queue are held running,
which the limited path counts on every claim.

W2L: W2 (3-step workflows, worker subprocesses) on an unconfigured queue and on a configured
queue whose concurrency limit does not bind (1,000), alternating, then on a queue limited to 4
across 2 workers x 8 slots, while a thread samples the queue's running runs every ~2 ms.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from bench.harness import percentile, wait_done, with_db, workers

if TYPE_CHECKING:
    from bench.harness import Bench

CL_WORKFLOW = "bench_cl"
CL_QUEUES = ("limited", "free")
CL_LIMIT = 1_000_000  # the largest concurrency configure_queue accepts: never binds here
CLAIM = "select * from pgdurable.claim_runs(%s, %s, 1, 30, %s)"
EXPLAIN_CLAIM = "explain (analyze, buffers, format json) " + CLAIM
COMPLETE = "select pgdurable.complete_run(%s, %s, %s)"


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params, prepare=True).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return tuple(row)


# --- CL: claim latency --------------------------------------------------------------------------


def _populate(conn: psycopg.Connection[Any], finished: int, pending: int) -> None:
    """``finished`` completed runs and ``pending`` pending runs per queue, interleaved between
    the two queues row by row, so that both sides have the same physical layout."""
    with conn.transaction():
        conn.execute(
            """
            insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status,
                input, output, attempt, available_at, created_at, started_at, updated_at,
                finished_at)
            select gen_random_uuid(), 'cl-done-' || g, %(wf)s,
                   case when g %% 2 = 0 then 'limited' else 'free' end, 'completed',
                   jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb),
                   to_jsonb(g), 1, c.t - interval '2 days', c.t - interval '2 days',
                   c.t - interval '2 days', c.t - interval '1 day', c.t - interval '1 day'
              from generate_series(1, %(n)s) g, (select pgdurable.now() as t) c
            """,
            {"wf": CL_WORKFLOW, "n": finished},
        )
        conn.execute(
            """
            insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status,
                input, attempt, available_at, created_at, updated_at)
            select gen_random_uuid(), 'cl-pending-' || g, %(wf)s,
                   case when g %% 2 = 0 then 'limited' else 'free' end, 'pending',
                   jsonb_build_object('args', jsonb_build_array(g), 'kwargs', '{}'::jsonb), 0,
                   c.t - interval '1 day' + g * interval '1 millisecond',
                   c.t - interval '1 day' + g * interval '1 millisecond',
                   c.t - interval '1 day' + g * interval '1 millisecond'
              from generate_series(1, %(n)s) g, (select pgdurable.now() as t) c
            """,
            {"wf": CL_WORKFLOW, "n": 2 * pending},
        )
    conn.execute("select pgdurable.configure_queue(%s, %s)", ("limited", CL_LIMIT))
    conn.execute("vacuum analyze pgdurable.runs")
    conn.execute("vacuum analyze pgdurable.queues")


def _claim_params(queue: str, worker: str = "w") -> tuple[Any, ...]:
    return (worker, [queue], [CL_WORKFLOW])


def _alternate(
    conn: psycopg.Connection[Any], claims: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latency (us) of ``claims`` one-run claims per queue, alternating, and how many of them
    returned a run; each claimed run is completed untimed."""
    lat: dict[str, list[float]] = {q: [] for q in CL_QUEUES}
    taken = dict.fromkeys(CL_QUEUES, 0)
    out = Jsonb(None)
    for i in range(claims):
        order = CL_QUEUES if i % 2 == 0 else CL_QUEUES[::-1]
        for q in order:
            t0 = time.perf_counter()
            rows = conn.execute(CLAIM, _claim_params(q), prepare=True).fetchall()
            lat[q].append((time.perf_counter() - t0) * 1e6)
            if len(rows) > 1 or any(row[3] != q for row in rows):
                raise RuntimeError(f"a claim of one run of queue {q!r} returned {rows}")
            for row in rows:
                taken[q] += 1
                conn.execute(COMPLETE, (row[0], row[5], out), prepare=True)
    return lat, taken


def _buffers(conn: psycopg.Connection[Any], reps: int) -> dict[str, dict[str, float]]:
    """Median shared buffers one claim touches per queue, from EXPLAIN (ANALYZE, BUFFERS) of
    claim_runs: the function scan's counters include every statement run inside it."""
    got: dict[str, dict[str, list[int]]] = {
        q: {"hit": [], "read": [], "dirtied": []} for q in CL_QUEUES
    }
    out = Jsonb(None)
    for i in range(reps):
        for q in CL_QUEUES if i % 2 == 0 else CL_QUEUES[::-1]:
            plan = _one(conn, EXPLAIN_CLAIM, _claim_params(q, "w-explain"))[0]
            node = plan[0]["Plan"]
            got[q]["hit"].append(node["Shared Hit Blocks"])
            got[q]["read"].append(node["Shared Read Blocks"])
            got[q]["dirtied"].append(node["Shared Dirtied Blocks"])
            for run_id, attempt in conn.execute(
                "select id, attempt from pgdurable.runs"
                " where worker_id = 'w-explain' and status = 'running'"
            ).fetchall():
                conn.execute(COMPLETE, (run_id, attempt, out), prepare=True)
    return {
        q: {k: statistics.median(v) for k, v in counters.items()} for q, counters in got.items()
    }


def _nested_plans(dsn: str, warm: int) -> dict[str, list[str]] | str:
    """The plans of the statements run inside one claim per queue, as PL/pgSQL executes them
    after ``warm`` claims on the connection (its plan cache), with actual rows and buffers:
    auto_explain sends them as notices. A string says why they could not be had."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("load 'auto_explain'")
        except psycopg.Error as exc:
            return f"auto_explain not available ({exc.sqlstate}: {exc}); plans not checked"
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for setting, value in (
            ("log_analyze", "on"),
            ("log_buffers", "on"),
            ("log_nested_statements", "on"),
            ("log_level", "notice"),
            ("log_timing", "off"),
        ):
            conn.execute("select set_config(%s, %s, false)", (f"auto_explain.{setting}", value))
        out = Jsonb(None)
        plans: dict[str, list[str]] = {}
        for q in CL_QUEUES:
            for i in range(warm + 1):
                last = i == warm
                conn.execute(
                    "select set_config('auto_explain.log_min_duration', %s, false)",
                    ("0" if last else "-1",),
                )
                notices.clear()
                rows = conn.execute(CLAIM, _claim_params(q, "w-plans"), prepare=True).fetchall()
                conn.execute("set auto_explain.log_min_duration = -1")  # not the COMPLETE below
                if len(rows) != 1:
                    raise RuntimeError(f"plan check: a claim of {q!r} returned {len(rows)} runs")
                conn.execute(COMPLETE, (rows[0][0], rows[0][5], out), prepare=True)
                if last:
                    plans[q] = [n for n in notices if "plan:" in n]
    return plans


def _candidate_plan(plans: list[str], marker: str) -> str:
    """The nested statement whose query text has ``marker``: the query that reads the pending
    runs in claim order (in _limited_claim the keyless path's ``concurrency_key is null`` query
    or the look-ahead's ``limit v_look``; ``with picked as`` on the free path)."""
    return next((p for p in plans if marker in p), "")


def _scans(plan: str) -> list[str]:
    """The scan lines of a text plan, e.g. 'Index Scan using runs_claim_idx on runs r'."""
    return [
        m.group(0).strip()
        for m in re.finditer(
            r"(?:Parallel )?(?:Index Only Scan|Index Scan|Bitmap Index Scan|"
            r"Seq Scan)[^\n(]*",
            plan,
        )
    ]


def _buffers_line(plan: str) -> str:
    m = re.search(r"Buffers: [^\n]*", plan)
    return m.group(0) if m else ""


def _hold_running(conn: psycopg.Connection[Any], n: int) -> None:
    """Claim ``n`` runs of each queue with a long lease and leave them running."""
    for q in CL_QUEUES:
        rows = conn.execute(
            "select * from pgdurable.claim_runs(%s, %s, %s, 3600, %s)",
            ("w-holder", [q], n, [CL_WORKFLOW]),
        ).fetchall()
        if len(rows) != n:
            raise RuntimeError(f"holding {n} running runs of {q!r}: claimed {len(rows)}")
    conn.execute("vacuum analyze pgdurable.runs")


def run_cl(bench: Bench) -> None:
    s = bench.sizes
    r = bench.report
    dbname = f"bench_cl_{uuid.uuid4().hex[:12]}"
    bench.conn.execute(f'create database "{dbname}"')
    try:
        from pgdurable._schema import init_schema

        dsn = with_db(bench.dsn, dbname)
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_schema(conn)
            t0 = time.perf_counter()
            _populate(conn, s.cl_finished, s.cl_pending)
            load_s = time.perf_counter() - t0
            counts: dict[str, int] = dict(
                conn.execute(
                    "select status, count(*) from pgdurable.runs group by status"
                ).fetchall()
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            _alternate(conn, 20)  # warm: prepared statements, PL/pgSQL plan caches
            lat, taken = _alternate(conn, s.cl_claims)
            bufs = _buffers(conn, s.cl_explain)
            plans = _nested_plans(dsn, warm=10)
            _hold_running(conn, s.cl_running)
            _alternate(conn, 20)
            lat_running, taken_running = _alternate(conn, s.cl_claims // 2)
            bufs_running = _buffers(conn, s.cl_explain)
    finally:
        bench.conn.execute(f'drop database if exists "{dbname}" with (force)')

    fl = bench.floor["insert_commit"]
    data: dict[str, Any] = {
        "finished": counts.get("completed", 0),
        "pending_per_queue": s.cl_pending,
        "limit": CL_LIMIT,
        "load_s": round(load_s, 1),
    }
    p50 = {q: statistics.median(v) for q, v in lat.items()}
    p95 = {q: percentile(v, 95) for q, v in lat.items()}
    r.figure(
        "CL",
        "claim_free_p50",
        p50["free"],
        "us",
        ratio=p50["free"] / fl,
        ratio_to="insert_commit",
        claims=len(lat["free"]),
        claims_with_a_run=taken["free"],
        **data,
    )
    ratio = p50["limited"] / p50["free"]
    r.figure(
        "CL",
        "claim_limited_p50",
        p50["limited"],
        "us",
        ratio=ratio,
        ratio_to="claim_free_p50",
        goal="<= 1.2x",
        met=ratio <= 1.2,
        floor_ratio=round(p50["limited"] / fl, 2),
        claims=len(lat["limited"]),
        claims_with_a_run=taken["limited"],
        **data,
    )
    r.figure(
        "CL",
        "claim_free_p95",
        p95["free"],
        "us",
        ratio=p95["free"] / fl,
        ratio_to="insert_commit",
    )
    r.figure(
        "CL",
        "claim_limited_p95",
        p95["limited"],
        "us",
        ratio=p95["limited"] / p95["free"],
        ratio_to="claim_free_p95",
    )
    # the keyless path's query (no keyed run pending: the bench's case), else the look-ahead
    candidate = (
        _candidate_plan(plans["limited"], "concurrency_key is null")
        or _candidate_plan(plans["limited"], "v_look")
        if isinstance(plans, dict)
        else ""
    )
    free_candidate = _candidate_plan(plans["free"], "picked") if isinstance(plans, dict) else ""
    scans = _scans(candidate)
    for q, b in (("free", bufs["free"]), ("limited", bufs["limited"])):
        extra: dict[str, Any] = {
            "shared_read": b["read"],
            "shared_dirtied": b["dirtied"],
            "explain_reps": s.cl_explain,
        }
        if isinstance(plans, str):
            extra["note"] = plans
        else:
            plan = candidate if q == "limited" else free_candidate
            extra["candidate_scans"] = _scans(plan)
            extra["candidate_buffers"] = _buffers_line(plan)
            extra["candidate_plan"] = plan[:6000]
            extra["nested_statements"] = len(plans[q])
        if q == "limited":
            extra["on_claim_idx"] = bool(scans) and all("runs_claim_idx" in x for x in scans)
        r.figure(
            "CL",
            f"buffers_{q}",
            b["hit"] + b["read"],
            "buffers/claim",
            ratio=(b["hit"] + b["read"]) / (bufs["free"]["hit"] + bufs["free"]["read"]),
            ratio_to="buffers_free",
            **extra,
        )
    p50r = {q: statistics.median(v) for q, v in lat_running.items()}
    r.figure(
        "CL",
        f"claim_free_p50_running_{s.cl_running}",
        p50r["free"],
        "us",
        ratio=p50r["free"] / fl,
        ratio_to="insert_commit",
        running_per_queue=s.cl_running,
        claims=len(lat_running["free"]),
        claims_with_a_run=taken_running["free"],
    )
    r.figure(
        "CL",
        f"claim_limited_p50_running_{s.cl_running}",
        p50r["limited"],
        "us",
        ratio=p50r["limited"] / p50r["free"],
        ratio_to=f"claim_free_p50_running_{s.cl_running}",
        running_per_queue=s.cl_running,
        claims=len(lat_running["limited"]),
        claims_with_a_run=taken_running["limited"],
        p95_ratio=round(
            percentile(lat_running["limited"], 95) / percentile(lat_running["free"], 95), 3
        ),
        buffers_free=bufs_running["free"]["hit"] + bufs_running["free"]["read"],
        buffers_limited=bufs_running["limited"]["hit"] + bufs_running["limited"]["read"],
    )


# --- W2L: W2 on configured queues ---------------------------------------------------------------


class RunningSampler:
    """Counts the running runs of a queue every ``every`` seconds on a connection of its own."""

    def __init__(self, dsn: str, queue: str, every: float = 0.002) -> None:
        self.dsn, self.queue, self.every = dsn, queue, every
        self.max_seen = 0
        self.samples = 0
        self.counts: dict[int, int] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise RuntimeError(f"the running-run sampler failed: {self._error}")

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                q = (
                    "select count(*) from pgdurable.runs"
                    " where queue_name = %s and status = 'running'"
                )
                while not self._stop.is_set():
                    n = _one(conn, q, (self.queue,))[0]
                    self.samples += 1
                    self.counts[n] = self.counts.get(n, 0) + 1
                    self.max_seen = max(self.max_seen, n)
                    self._stop.wait(self.every)
        except BaseException as exc:  # reported by __exit__
            self._error = exc


def _w2_round(bench: Bench, queue: str, limit: int | None, sample: bool = False) -> dict[str, Any]:
    """W2's procedure on ``queue`` (configured with ``limit`` first, and declared by each worker
    with app.queue(); None: left unconfigured). Workflows/s from the runs' own timestamps."""
    s = bench.sizes
    n = s.w2_workflows
    extra: tuple[str, ...] = ()
    if limit is not None:
        bench.conn.execute("select pgdurable.configure_queue(%s, %s)", (queue, limit))
        extra = ("--queue-concurrency", str(limit))
    for lo in range(0, n, 5000):
        bench.b.w2.start_many([(i,) for i in range(lo, min(n, lo + 5000))], queue=queue)
    sampler = RunningSampler(bench.dsn, queue) if sample else None
    with workers(bench.dsn, queue, s.w2_processes, s.w2_concurrency, extra):
        if sampler is not None:
            with sampler:
                wait_done(bench.conn, queue, n, timeout=60 if bench.smoke else 600)
        else:
            wait_done(bench.conn, queue, n, timeout=60 if bench.smoke else 600)
    secs, configured = _one(
        bench.conn,
        "select extract(epoch from max(finished_at) - min(started_at))::float8,"
        " (select concurrency from pgdurable.queues where name = %s)"
        " from pgdurable.runs where queue_name = %s",
        (queue, queue),
    )
    if configured != limit:
        raise RuntimeError(f"queue {queue!r} has concurrency {configured}, expected {limit}")
    out: dict[str, Any] = {"wfs": n / secs, "secs": secs}
    if sampler is not None:
        out["max_running"] = sampler.max_seen
        out["samples"] = sampler.samples
        out["samples_at_limit"] = sampler.counts.get(limit or -1, 0)
    return out


def run_w2l(bench: Bench) -> None:
    s = bench.sizes
    fl = bench.floor["insert_commit"]
    tag = uuid.uuid4().hex[:6]
    free: list[float] = []
    limited: list[float] = []
    for i in range(s.w2l_rounds):
        # U L, then L U: neither side always runs first
        order = ("free", "limited") if i % 2 == 0 else ("limited", "free")
        for side in order:
            if side == "free":
                free.append(_w2_round(bench, f"w2l-free-{tag}-{i}", None)["wfs"])
            else:
                limited.append(_w2_round(bench, f"w2l-lim-{tag}-{i}", 1000)["wfs"])
    f, lim = statistics.median(free), statistics.median(limited)
    common: dict[str, Any] = {
        "workflows": s.w2_workflows,
        "processes": s.w2_processes,
        "concurrency": s.w2_concurrency,
        "rounds": s.w2l_rounds,
    }
    r = bench.report
    r.figure(
        "W2L",
        "workflows_per_s_unconfigured",
        f,
        "wf/s",
        ratio=(1e6 / f) / fl,
        ratio_to="insert_commit (us per workflow)",
        each=[round(x, 1) for x in free],
        **common,
    )
    r.figure(
        "W2L",
        "workflows_per_s_limit_1000",
        lim,
        "wf/s",
        ratio=(1e6 / lim) / fl,
        ratio_to="insert_commit (us per workflow)",
        each=[round(x, 1) for x in limited],
        **common,
    )
    r.figure(
        "W2L",
        "us_per_workflow_limit_1000",
        1e6 / lim,
        "us/wf",
        ratio=f / lim,
        ratio_to="unconfigured (us per workflow)",
        unconfigured_us=round(1e6 / f, 1),
    )
    limit = 4
    b = _w2_round(bench, f"w2l-bind-{tag}", limit, sample=True)
    r.figure(
        "W2L",
        f"workflows_per_s_limit_{limit}",
        b["wfs"],
        "wf/s",
        ratio=(1e6 / b["wfs"]) / fl,
        ratio_to="insert_commit (us per workflow)",
        seconds=round(b["secs"], 3),
        **common,
    )
    r.figure(
        "W2L",
        f"max_running_limit_{limit}",
        b["max_running"],
        "runs",
        ratio=b["max_running"] / limit,
        ratio_to=f"limit {limit}",
        goal=f"<= {limit}",
        met=b["max_running"] <= limit,
        limit=limit,
        samples=b["samples"],
        samples_at_limit=b["samples_at_limit"],
        slots=s.w2_processes * s.w2_concurrency,
    )
