"""OpenTelemetry spans of runs and steps, exported by the SDK's InMemorySpanExporter: one trace
follows a run started inside a span across attempts, sleeps and child workflows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once

import pgdurable
from apps.support import running_worker, scalar, wait_status
from conftest import ROOT
from pgdurable import Retry
from pgdurable._tracing import stop_tracing
from pgdurable.testing import DurableClock

BOTH_FLAVOURS = True


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    trace.set_tracer_provider(provider)
    yield exported
    stop_tracing()
    provider.shutdown()
    # The API lets a process set its provider once: give the next tests the default back.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    return sorted(found, key=lambda s: s.start_time or 0)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


TRACER = trace.get_tracer("tests")


def test_a_run_started_in_a_span_is_its_child_and_steps_are_children_of_the_attempt(
    app: pgdurable.App, dsn: str, spans: InMemorySpanExporter
) -> None:
    @app.step()
    def add_one(x: int) -> int:
        return x + 1

    @app.transaction()
    def note(conn: Any, x: int) -> int:
        return x

    @app.workflow(name="tr.simple")
    def simple(x: int) -> int:
        return note(add_one(x))

    with running_worker(app):
        with TRACER.start_as_current_span("http request") as request:
            handle = simple.options(workflow_id="simple-1").start(1)
        assert handle.result(timeout=30) == 2
    root = request.get_span_context()

    (run,) = named(spans, "pgdurable.run tr.simple")
    assert run.context.trace_id == root.trace_id
    assert parent_id(run) == root.span_id
    assert attrs(run) == {
        "pgdurable.run_id": str(handle.run_id),
        "pgdurable.workflow_id": "simple-1",
        "pgdurable.workflow": "tr.simple",
        "pgdurable.attempt": 1,
        "pgdurable.queue": "default",
        "pgdurable.outcome": "completed",
    }
    (step,) = named(spans, "pgdurable.step add_one")
    (tx,) = named(spans, "pgdurable.step note")
    for span, kind in ((step, "step"), (tx, "transaction")):
        assert span.context.trace_id == root.trace_id
        assert parent_id(span) == run.context.span_id
        assert attrs(span)["pgdurable.step_kind"] == kind
        assert attrs(span)["pgdurable.outcome"] == "completed"
        assert attrs(span)["pgdurable.run_id"] == str(handle.run_id)
    # the start stored the W3C headers of the request's span on the run
    stored = scalar(dsn, "select trace_context from pgdurable.runs where id = %s", [handle.run_id])
    assert stored["traceparent"].startswith(f"00-{root.trace_id:032x}-{root.span_id:016x}-")


def test_runs_started_in_a_batch_inside_a_span_join_its_trace(
    app: pgdurable.App, dsn: str, spans: InMemorySpanExporter
) -> None:
    @app.workflow(name="tr.batch")
    def batch(x: int) -> int:
        return x

    with TRACER.start_as_current_span("import job") as job:
        handles = batch.start_many([(1,), (2,), (3,)])
    untraced = batch.start_many([(4,)])
    root = job.get_span_context()
    with running_worker(app):
        assert [h.result(timeout=30) for h in handles] == [1, 2, 3]
        assert untraced[0].result(timeout=30) == 4

    runs = named(spans, "pgdurable.run tr.batch")
    assert len(runs) == 4
    joined = [r for r in runs if r.context.trace_id == root.trace_id]
    assert sorted(attrs(r)["pgdurable.run_id"] for r in joined) == sorted(
        str(h.run_id) for h in handles
    )
    assert all(parent_id(r) == root.span_id for r in joined)
    assert (
        scalar(dsn, "select trace_context from pgdurable.runs where id = %s", [untraced[0].run_id])
        is None
    )


def test_a_run_that_sleeps_keeps_one_trace_across_its_attempts(
    app: pgdurable.App, dsn: str, spans: InMemorySpanExporter
) -> None:
    @app.step()
    def double(x: int) -> int:
        return 2 * x

    @app.workflow(name="tr.sleeper")
    def sleeper(x: int) -> int:
        y = double(x)
        pgdurable.sleep(3600)
        return double(y)

    with running_worker(app):
        with TRACER.start_as_current_span("signup") as request:
            handle = sleeper.start(3)
        wait_status(dsn, handle.run_id, "sleeping")
        DurableClock(dsn, []).advance(hours=2)
        assert handle.result(timeout=30) == 12
    root = request.get_span_context()

    first, second = named(spans, "pgdurable.run tr.sleeper")
    assert [attrs(s)["pgdurable.attempt"] for s in (first, second)] == [1, 2]
    assert [attrs(s)["pgdurable.outcome"] for s in (first, second)] == ["suspended", "completed"]
    for span in (first, second):
        assert span.context.trace_id == root.trace_id
        assert parent_id(span) == root.span_id
    # the first attempt ran `double`; the second replayed it and ran `double#2`
    steps = named(spans, "pgdurable.step double")
    assert [(attrs(s)["pgdurable.step_key"], parent_id(s)) for s in steps] == [
        ("double", first.context.span_id),
        ("double#2", second.context.span_id),
    ]


def test_a_child_workflow_joins_its_parents_trace(
    app: pgdurable.App, spans: InMemorySpanExporter
) -> None:
    @app.step()
    def shout(s: str) -> str:
        return s.upper()

    @app.workflow(name="tr.child")
    def child(s: str) -> str:
        return shout(s)

    @app.workflow(name="tr.parent")
    def parent(s: str) -> str:
        return child(s) + "!"

    with running_worker(app):
        # started outside any span: the parent's first attempt is the root of the trace
        assert parent.start("hi").result(timeout=30) == "HI!"

    parents = named(spans, "pgdurable.run tr.parent")
    (child_run,) = named(spans, "pgdurable.run tr.child")
    (step,) = named(spans, "pgdurable.step shout")
    first = parents[0]
    assert parent_id(first) is None
    assert child_run.context.trace_id == first.context.trace_id
    assert parent_id(child_run) == first.context.span_id
    assert parent_id(step) == child_run.context.span_id
    # a run started outside a span has no stored context: each attempt is a trace of its own
    assert all(parent_id(p) is None for p in parents)


def test_a_failing_step_records_its_exceptions_and_the_run_fails_in_error(
    app: pgdurable.App, spans: InMemorySpanExporter
) -> None:
    @app.step(retry=Retry(max_attempts=2, initial_delay=0.01, jitter=False))
    def charge(cents: int) -> None:
        raise ValueError(f"card declined for {cents}")

    @app.workflow(name="tr.fails")
    def fails(cents: int) -> None:
        charge(cents)

    with running_worker(app):
        with TRACER.start_as_current_span("checkout"):
            handle = fails.start(999)
        with pytest.raises(pgdurable.WorkflowFailed):
            handle.result(timeout=30)

    (step,) = named(spans, "pgdurable.step charge")
    assert step.status.status_code is StatusCode.ERROR
    assert "card declined for 999" in (step.status.description or "")
    exceptions = [e for e in step.events if e.name == "exception"]
    # the first attempt's failure (retried) and the second's (final)
    assert [dict(e.attributes or {})["exception.type"] for e in exceptions] == [
        "ValueError",
        "ValueError",
    ]
    assert dict(exceptions[0].attributes or {})["pgdurable.step_attempt"] == 1
    (run,) = named(spans, "pgdurable.run tr.fails")
    assert run.status.status_code is StatusCode.ERROR
    assert attrs(run)["pgdurable.outcome"] == "failed"
    assert parent_id(step) == run.context.span_id


def test_without_a_tracer_provider_nothing_is_imported_or_observed() -> None:
    """pgdurable never imports OpenTelemetry itself, and a worker without a provider installs
    no observer: the hot path sees ``_telemetry.observer is None``."""
    code = (
        "import json, sys, pgdurable\n"
        "from pgdurable import _telemetry, _tracing\n"
        "_tracing.ensure_installed()\n"
        "print(json.dumps([_telemetry.observer is None, "
        "any(m.startswith('opentelemetry') for m in sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == [True, False]
