"""One trace per workflow: pgdurable's OpenTelemetry spans, across a durable sleep.

    pip install -e ".[tracing-sdk]"      # opentelemetry-api and the SDK this script uses
    PGDURABLE_DSN=postgresql://... python examples/tracing.py

pgdurable itself needs only opentelemetry-api; the SDK (exporters, sampling, the collector you
send spans to) is the application's choice. Here the SDK's in-memory exporter keeps the spans
and the script prints them as a tree. A "checkout" span (a web request, say) starts an order
workflow; the workflow charges a card, sleeps durably (the run leaves the worker and a timer
brings it back, as a second attempt) and sends a receipt. The start stored the request's trace
context on the run, so both attempts and their steps land in the request's trace. In
production, swap the in-memory exporter for an OTLP one (opentelemetry-exporter-otlp).
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgdurable

# The application configures tracing before its workers start: pgdurable then traces each
# attempt and step (without a provider it skips tracing altogether).
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database


@app.step()
def charge_card(cents: int) -> str:
    return f"ch-{cents}"


@app.step()
def send_receipt(charge_id: str) -> str:
    return f"receipt sent for {charge_id}"


@app.workflow(name="tracing.order")
def order(cents: int) -> str:
    charge = charge_card(cents)
    pgdurable.sleep(timedelta(seconds=1))  # the run leaves the worker; a timer wakes it
    return send_receipt(charge)


def show(spans: list[ReadableSpan]) -> None:
    """The spans as a tree, children in start order, with pgdurable's attempt and outcome."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            attrs = dict(span.attributes or {})
            extra = ""
            if span.name.startswith("pgdurable.run"):
                extra = f" attempt={attrs['pgdurable.attempt']}"
            if "pgdurable.outcome" in attrs:
                extra += f" outcome={attrs['pgdurable.outcome']}"
            print(f"{'  ' * depth}{span.name}{extra}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    worker = app.worker(concurrency=2, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with tracer.start_as_current_span("checkout"):
            handle = order.options(workflow_id=f"order-{uuid.uuid4().hex[:8]}").start(2500)
        print(f"order: {handle.result(timeout=30)}")
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()
    spans = exporter.get_finished_spans()
    print(f"spans: {len(spans)} in {len({s.context.trace_id for s in spans})} trace")
    show(list(spans))
    provider.shutdown()


if __name__ == "__main__":
    main()
