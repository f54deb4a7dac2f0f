"""Prometheus metrics: a worker's /metrics counts what it ran (by workflow, queue and step) and
reads queue depth from the database; the dashboard's /metrics shows the database part."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import uuid
import warnings

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import pgdurable
from apps.support import running_worker, wait_until
from conftest import ROOT
from pgdurable import Retry
from pgdurable.dashboard import create_app
from pgdurable.testing import DurableClock
from pgdurable_cli.main import cli

with warnings.catch_warnings():
    # this starlette asks for the httpx2 package; httpx works the same for these requests
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BOTH_FLAVOURS = True

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def test_a_worker_counts_runs_steps_retries_and_claims_by_label(
    app: pgdurable.App, dsn: str, flavour: str
) -> None:
    tag = uuid.uuid4().hex[:8]  # metrics are per process: names of this test only
    ok_name, bad_name = f"m.ok.{tag}", f"m.bad.{tag}"
    calls: list[int] = []

    @app.step(name=f"flaky.{tag}", retry=Retry(max_attempts=3, initial_delay=0.01, jitter=False))
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 2:
            raise ConnectionError("try again")
        return x

    @app.step(name=f"broken.{tag}", retry=Retry(max_attempts=1))
    def broken() -> None:
        raise ValueError("always")

    @app.workflow(name=ok_name)
    def ok(x: int) -> int:
        return flaky(x)

    @app.workflow(name=bad_name, queue=f"mq{tag}")
    def bad() -> None:
        broken()

    lane = flavour
    with running_worker(app, concurrency=3, async_concurrency=5, metrics_port=0) as worker:
        assert worker.metrics is not None
        port = worker.metrics.port
        assert ok.start(7).result(timeout=30) == 7
        with pytest.raises(pgdurable.WorkflowFailed):
            bad.start().result(timeout=30)
        done = f'pgdurable_runs_failed_total{{queue="mq{tag}",workflow="{bad_name}"}}'
        wait_until("the failed run to be counted", lambda: done in _text(port))
        m = scrape(port)
        # the endpoint also serves the default registry (process_*, the application's own)
        assert any(name.startswith("python_") for name, _ in m)
    after = _text_or_none(port)

    assert value(m, "pgdurable_runs_started_total", workflow=ok_name, queue="default") == 1
    assert value(m, "pgdurable_runs_completed_total", workflow=ok_name, queue="default") == 1
    assert value(m, "pgdurable_runs_failed_total", workflow=bad_name, queue=f"mq{tag}") == 1
    assert value(m, "pgdurable_runs_failed_total", workflow=ok_name, queue="default") is None
    attempts = "pgdurable_attempts_total"
    assert value(m, attempts, workflow=ok_name, queue="default", outcome="completed") == 1
    assert value(m, attempts, workflow=bad_name, queue=f"mq{tag}", outcome="failed") == 1
    assert value(m, "pgdurable_step_retries_total", workflow=ok_name, step=f"flaky.{tag}") == 1
    count = "pgdurable_step_duration_seconds_count"
    assert value(m, count, workflow=ok_name, step=f"flaky.{tag}", outcome="completed") == 1
    assert value(m, count, workflow=bad_name, step=f"broken.{tag}", outcome="failed") == 1
    assert value(m, count, workflow=ok_name, step=f"flaky.{tag}", outcome="failed") is None
    # the retry waited 10 ms in place: the step took at least that
    seconds = "pgdurable_step_duration_seconds_sum"
    total = value(m, seconds, workflow=ok_name, step=f"flaky.{tag}", outcome="completed")
    assert total is not None and total >= 0.01
    assert (value(m, "pgdurable_claim_duration_seconds_count", lane=lane) or 0) >= 2
    assert value(m, "pgdurable_worker_slots", lane=lane) == (3 if lane == "sync" else 5)
    assert value(m, "pgdurable_worker_slots_busy", lane=lane) == 0
    # the database part, read at scrape time
    assert value(m, "pgdurable_queue_metrics_up") == 1
    assert value(m, "pgdurable_queue_depth", queue="default") == 0
    assert after is None, "the endpoint stops with the worker"


def _text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _text_or_none(port: int) -> str | None:
    try:
        return _text(port)
    except OSError:
        return None


def _backlog(app: pgdurable.App, dsn: str, queue: str, n: int) -> None:
    """``n`` pending runs on ``queue``, which no worker serves."""

    @app.workflow(name=f"waits.{queue}", queue=queue)
    def waits() -> None:
        return None

    for _ in range(n):
        waits.start()


def test_queue_depth_and_oldest_age_come_from_the_database(app: pgdurable.App, dsn: str) -> None:
    queue = f"backlog{uuid.uuid4().hex[:6]}"
    _backlog(app, dsn, queue, 3)
    DurableClock(dsn, []).advance(minutes=5)
    with running_worker(app, queues=["default"], metrics_port=0) as worker:
        assert worker.metrics is not None
        m = scrape(worker.metrics.port)
    assert value(m, "pgdurable_queue_depth", queue=queue) == 3
    assert value(m, "pgdurable_queue_runs", queue=queue, status="pending") == 3
    assert value(m, "pgdurable_queue_runs", queue=queue, status="running") == 0
    age = value(m, "pgdurable_queue_oldest_pending_age_seconds", queue=queue)
    assert age is not None and 300 <= age < 400
    assert value(m, "pgdurable_queue_paused", queue=queue) == 0


def test_the_dashboard_serves_the_queue_metrics_behind_its_token(
    app: pgdurable.App, dsn: str
) -> None:
    queue = f"dash{uuid.uuid4().hex[:6]}"
    _backlog(app, dsn, queue, 2)
    token = "s3cret-token-for-metrics-0123456789"
    with TestClient(create_app(dsn, auth=token, read_only=True)) as client:
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = parse(response.text)
    assert value(m, "pgdurable_queue_depth", queue=queue) == 2
    assert value(m, "pgdurable_queue_metrics_up") == 1
    # the dashboard runs no worker: no worker-side metrics
    assert not any(name.startswith("pgdurable_runs_") for name, _ in m)


def test_the_dashboard_reports_an_unreachable_database_as_a_metric() -> None:
    dead = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"
    with TestClient(create_app(dead)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert value(parse(response.text), "pgdurable_queue_metrics_up") == 0


def test_metrics_port_without_prometheus_client_names_the_extra(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    result = CliRunner().invoke(cli, ["worker", "cli_app:app", "--dsn", dsn, "--metrics-port", "0"])
    assert result.exit_code != 0
    assert 'pip install "pgdurable[metrics]"' in result.output
    app = pgdurable.App(dsn)
    try:
        with pytest.raises(ImportError, match=re.escape('pip install "pgdurable[metrics]"')):
            app.worker(metrics_port=9100)
    finally:
        app.close()


def test_bad_metrics_options_are_refused(app: pgdurable.App) -> None:
    with pytest.raises(ValueError, match="metrics_port must be between 0 and 65535"):
        app.worker(metrics_port=70000)
    with pytest.raises(TypeError, match="metrics_port must be an int"):
        app.worker(metrics_port="9100")  # type: ignore[arg-type]


def test_the_cli_worker_serves_metrics(dsn: str) -> None:
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONPATH=str(ROOT / "tests"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgdurable_cli.main",
            "worker",
            "cli_app:app",
            "--metrics-port",
            "0",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "the worker never said where its metrics are"
        m = scrape(port)
        assert value(m, "pgdurable_worker_slots", lane="sync") == 8
        assert value(m, "pgdurable_queue_metrics_up") == 1
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
