"""Prometheus metrics (``prometheus-client``, imported lazily): what workers see as they run, and
queue depth read from the database at scrape time. docs/operations.md#metrics lists them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._db import call_sql, describe
from ._telemetry import Observer, install, uninstall

if TYPE_CHECKING:
    from ._claims import Claim
    from ._context import RunContext
    from ._runtime import Runtime

log = logging.getLogger("pgdurable.metrics")

INSTALL_HINT = 'metrics need the prometheus-client package: pip install "pgdurable[metrics]"'
# The scrape-time query gives up after this long (set local statement_timeout): a scrape never
# holds a backend longer, whatever the backlog.
QUEUE_QUERY_TIMEOUT = "2s"
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
QueueRow = Sequence[Any]  # queue, pending, running, sleeping, waiting, oldest age (s), paused


def prometheus() -> Any:
    """The prometheus_client module, or an ImportError that says what to install."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return prometheus_client


class MetricsObserver(Observer):
    """The worker-side metrics, one set per process (every worker of it adds to the same)."""

    def __init__(self) -> None:
        prom = prometheus()
        run_labels = ["workflow", "queue"]
        step_labels = ["workflow", "step"]

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return prom.Counter(name, doc, labels, registry=None)

        self.runs_started = counter(
            "pgdurable_runs_started", "Runs this process began (their first attempt)", run_labels
        )
        self.runs_completed = counter(
            "pgdurable_runs_completed", "Runs this process completed", run_labels
        )
        self.runs_failed = counter(
            "pgdurable_runs_failed", "Runs this process ended failed", run_labels
        )
        self.attempts = counter(
            "pgdurable_attempts",
            "Attempts of runs this process executed, by how each ended",
            [*run_labels, "outcome"],
        )
        self.leases_lost = counter(
            "pgdurable_leases_lost",
            "Attempts abandoned because another worker took the run over",
            run_labels,
        )
        self.step_retries = counter(
            "pgdurable_step_retries", "Failed step attempts that will be retried", step_labels
        )
        self.step_seconds = prom.Histogram(
            "pgdurable_step_duration_seconds",
            "Time from a step's first call to its checkpoint, retries in place included",
            [*step_labels, "outcome"],
            buckets=STEP_BUCKETS,
            registry=None,
        )
        self.claim_seconds = prom.Histogram(
            "pgdurable_claim_duration_seconds",
            "Time of one claim (connection checkout and claim_runs)",
            ["lane"],
            buckets=CLAIM_BUCKETS,
            registry=None,
        )
        self.slots = prom.Gauge(
            "pgdurable_worker_slots",
            "Runs the workers can execute at once",
            ["lane"],
            registry=None,
        )
        self.slots_busy = prom.Gauge(
            "pgdurable_worker_slots_busy", "Runs the workers execute now", ["lane"], registry=None
        )

    def collectors(self) -> list[Any]:
        return [v for v in vars(self).values() if hasattr(v, "collect")]

    def attempt_started(self, claim: Claim) -> Any:
        if claim.attempt == 1:
            self.runs_started.labels(claim.workflow_name, claim.queue).inc()
        return None

    def attempt_ended(self, claim: Claim, token: Any, outcome: str, value: Any) -> None:
        labels = (claim.workflow_name, claim.queue)
        self.attempts.labels(*labels, outcome).inc()
        if outcome == "completed":
            self.runs_completed.labels(*labels).inc()
        elif outcome == "failed":
            self.runs_failed.labels(*labels).inc()
        elif outcome == "lost":
            self.leases_lost.labels(*labels).inc()

    def step_ended(
        self,
        ctx: RunContext,
        kind: str,
        name: str,
        key: str,
        token: Any,
        outcome: str,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        self.step_seconds.labels(ctx.workflow_name, name, outcome).observe(seconds)

    def step_retried(
        self, ctx: RunContext, name: str, key: str, attempts: int, error: Exception, delay: float
    ) -> None:
        self.step_retries.labels(ctx.workflow_name, name).inc()

    def claimed(self, lane: str, runs: int, seconds: float) -> None:
        self.claim_seconds.labels(lane).observe(seconds)

    def slots_changed(self, lane: str, delta: int) -> None:
        self.slots_busy.labels(lane).inc(delta)


class QueueCollector:
    """Queue depth, runs by status and the oldest pending run's age per queue, read with one
    query (``metrics_queues``) at each scrape; its failure is a metric, not a failed scrape."""

    def __init__(self, read: Callable[[], list[QueueRow]]) -> None:
        self.read = read
        self.last_error: str | None = None

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        began = time.perf_counter()
        try:
            rows, ok = self.read(), 1
            self.last_error = None
        except Exception as exc:  # the database is down, the query timed out: say so
            rows, ok = [], 0
            if describe(exc) != self.last_error:  # once per new error, not per scrape
                log.warning("metrics: cannot read the queues (%s)", describe(exc))
            self.last_error = describe(exc)
        depth, runs, oldest, paused, up, took = self._families()
        for queue, pending, running, sleeping, waiting, age, is_paused in rows:
            depth.add_metric([queue], pending)
            for status, count in (
                ("pending", pending),
                ("running", running),
                ("sleeping", sleeping),
                ("waiting", waiting),
            ):
                runs.add_metric([queue, status], count)
            oldest.add_metric([queue], float(age or 0.0))
            paused.add_metric([queue], 1 if is_paused else 0)
        up.add_metric([], ok)
        took.add_metric([], time.perf_counter() - began)
        return iter((depth, runs, oldest, paused, up, took))

    def _families(self) -> tuple[Any, ...]:
        prometheus()  # the ImportError that names the extra
        from prometheus_client.core import GaugeMetricFamily as gauge

        return (
            gauge("pgdurable_queue_depth", "Pending runs of a queue", labels=["queue"]),
            gauge("pgdurable_queue_runs", "Unfinished runs of a queue", labels=["queue", "status"]),
            gauge(
                "pgdurable_queue_oldest_pending_age_seconds",
                "How long the oldest claimable pending run of a queue has waited",
                labels=["queue"],
            ),
            gauge("pgdurable_queue_paused", "1 while a queue is paused", labels=["queue"]),
            gauge("pgdurable_queue_metrics_up", "1 when the queue metrics could be read"),
            gauge("pgdurable_queue_metrics_seconds", "Time to read the queue metrics"),
        )


def read_queues(conn: Any) -> list[QueueRow]:
    """The metrics_queues rows, in the open transaction of ``conn``, under a statement timeout."""
    call_sql(conn, "metrics_statement_timeout", (QUEUE_QUERY_TIMEOUT,))
    rows = call_sql(conn, "metrics_queues").fetchall()
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]


def store_exposition(store: Any) -> tuple[int, bytes, str]:
    """The dashboard's /metrics: (HTTP status, body, content type) of the database-read metrics,
    read in one of ``store``'s read-only transactions."""
    try:
        prom = prometheus()
    except ImportError as exc:
        return 501, f"{exc}\n".encode(), "text/plain; charset=utf-8"

    def read() -> list[QueueRow]:
        with store.reading() as reader:
            return read_queues(reader.conn)

    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(read))
    return 200, prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST


class _Default:
    """The default registry's metrics (process_*, python_*, the application's own) beside
    pgdurable's on the worker's endpoint."""

    def collect(self) -> Iterator[Any]:
        return iter(prometheus().REGISTRY.collect())


_observer: MetricsObserver | None = None
_observer_lock = threading.Lock()


def shared_observer() -> MetricsObserver:
    global _observer
    with _observer_lock:
        if _observer is None:
            _observer = MetricsObserver()
        return _observer


class MetricsServer:
    """The HTTP endpoint of one worker: its metrics, counted while it runs, and the queues."""

    def __init__(self, app: Runtime, host: str, port: int, slots: dict[str, int]) -> None:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"metrics_port must be an int, got {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(
                f"metrics_port must be between 0 and 65535 (0: any free port), got {port}"
            )
        if not isinstance(host, str) or not host:
            raise ValueError(f"metrics_host must be a host name or address, got {host!r}")
        self.app, self.host, self.port = app, host, port
        self.slots = {lane: n for lane, n in slots.items() if n}
        prometheus()  # the ImportError naming the extra, now rather than when run() starts
        self.observer = shared_observer()
        self._http: Any = None

    def _read(self) -> list[QueueRow]:
        with self.app.pool.connection(timeout=5) as conn, conn.transaction():
            return read_queues(conn)

    def start(self) -> None:
        prom = prometheus()
        registry = prom.CollectorRegistry(auto_describe=False)
        for collector in [*self.observer.collectors(), QueueCollector(self._read), _Default()]:
            registry.register(collector)
        try:
            self._http, _thread = prom.start_http_server(self.port, self.host, registry)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {self.host}:{self.port} ({exc}): choose another "
                "--metrics-port, or stop what listens there"
            ) from exc
        self.port = self._http.server_address[1]
        log.info("metrics on http://%s:%s/metrics", self.host, self.port)
        for lane, n in self.slots.items():
            self.observer.slots.labels(lane).inc(n)
        install(self.observer)

    def stop(self) -> None:
        if self._http is None:
            return
        uninstall(self.observer)
        for lane, n in self.slots.items():
            self.observer.slots.labels(lane).dec(n)
        self._http.shutdown()
        self._http.server_close()
        self._http = None
