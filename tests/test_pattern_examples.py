"""The pattern examples (approval, saga, fan-out, LLM stream, FastAPI, rate-limited emails,
nightly report) run as subprocesses;
their output is asserted.

Each example is self-contained: App() from $PGDURABLE_DSN, init_schema(), a worker thread, and
it emits or cancels by itself, so its output is the same on every run.
"""

from __future__ import annotations

import os

import pytest

from apps.support import query, scalar, wait_until
from conftest import ROOT
from test_examples import _run

EXPECTED: dict[str, list[str]] = {
    "approval.py": [
        "database: the database in $PGDURABLE_DSN",
        "expense 1: denied by bob (over budget)",
        "  history: ask_manager, event",
        "expense 2: no answer within 1 s, reminder sent, status waiting",
        "expense 2: approved by ann",
        "  history: ask_manager, event(timed out), send_reminder, event",
        "expense 3: withdrawn, cancel() -> cancelled",
        "expense 3: status cancelled",
    ],
    "tracing.py": [
        "database: the database in $PGDURABLE_DSN",
        "order: receipt sent for ch-2500",
        "spans: 5 in 1 trace",
        "checkout",
        "  pgdurable.run tracing.order attempt=1 outcome=suspended",
        "    pgdurable.step charge_card outcome=completed",
        "  pgdurable.run tracing.order attempt=2 outcome=completed",
        "    pgdurable.step send_receipt outcome=completed",
    ],
    "saga.py": [
        "database: the database in $PGDURABLE_DSN",
        "order 1: 2 x widget, 2500 cents, to Lyon",
        "  reserve 2 x widget",
        "  charge 2500 cents",
        "  book courier to Lyon",
        "order 1: completed, courier-Lyon",
        "order 1: compensations recorded: none",
        "order 2: 2 x widget, 2500 cents, to Atlantis",
        "  reserve 2 x widget",
        "  charge 2500 cents",
        "  undo: refund ch-2500",  # newest first
        "  undo: release res-widget",
        "order 2: failed with pgdurable.NonRetryableError: no courier delivers to Atlantis",
        "order 2: compensations recorded: undo:refund_card, undo:release_stock",
    ],
    "fanout.py": [
        "database: the database in $PGDURABLE_DSN",
        "question: plan a picnic in Paris on Saturday for 4",
        "  weather(Paris, Saturday) -> sunny, 24 C",
        "  search(parks in Paris) -> Parc des Buttes-Chaumont",
        "  calculator(4 * 12.5) -> 50.00",
        "answer: Saturday in Paris looks sunny, 24 C: picnic at Parc des Buttes-Chaumont, "
        "budget 50.00 EUR",
        "children of the agent run: 3, all completed",
        "tool attempts: 1, 2, 1",
    ],
    "llm_stream.py": [
        "database: the database in $PGDURABLE_DSN",
        "prompt: Why is the sky blue?",
        "client 1: Sunlight scatters off the molecules of",
        "client 1: disconnected at offset 6",
        "client 2: resumed at offset 6: the air, and blue light, with its short wavelength, "
        "scatters the most: the sky glows blue from every direction.",
        "client 2: stream closed at offset 25",
        "answer: Sunlight scatters off the molecules of the air, and blue light, with its short "
        "wavelength, scatters the most: the sky glows blue from every direction.",
        "the client got every token exactly once: True",
        "status stream: queued, generating, done",  # written before a replay, yet once
        "in SQL: answer 25 values, closed; status 3 values, closed",
    ],
    "rate_limited_emails.py": [
        "database: the database in $PGDURABLE_DSN",
        "queued: 12 emails for 3 customers",
        "sent: 12",
        "most in flight at once: 2 (limit 2)",
        "most started in any second: 4 (limit 4)",
        "each customer's emails in queue order: True",
        "pgdurable.queue_overview: concurrency 2, rate 4 per 1 s, per key 1, fifo True, "
        "paused False",
    ],
    "nightly_report.py": [
        "database: the database in $PGDURABLE_DSN",
        "schedule: 02:00 Europe/Berlin every night",
        "next run within a day: True",
        "run now: started",
        "result: mailed: 3 orders, 120.50 EUR",
        "its workflow id: schedule:<name>:now:... True",
        "next run unchanged: True",
        "schedule deleted (its runs stay)",
    ],
    "fastapi_app.py": [
        "database: the database in $PGDURABLE_DSN",
        "server: uvicorn on 127.0.0.1 (a free port), the worker started by its lifespan",
        "order 1: POST /orders 2 x widget -> 201 ['order_id', 'run_id', 'workflow_id']",
        "order 1: committed together: order rows 1, runs 1",
        "order 1: GET /orders/{id}/result?timeout=0.5 -> 202 (still running)",
        "order 1: GET /orders/{id}/events, live: received, paid 2500 cents, "
        "waiting for the warehouse",
        "order 1: POST /orders/{id}/packed -> 202",
        "order 1: the same event stream goes on: shipped in parcel P-1, (end)",
        "order 1: GET /orders/{id}/result -> 200 status=shipped, cents=2500, parcel=P-1",
        "order 1: reconnecting with Last-Event-ID: 1 -> waiting for the warehouse, "
        "shipped in parcel P-1",
        "order 2: POST /orders 1 x gadget -> 409 out of stock: gadget",
        "order 2: rolled back together: order rows 0, runs 0",
        "order 2: GET /orders/{id}/result -> 404 no order {id}",
        "order 3: POST /orders 50 x widget -> 201",
        "order 3: GET /orders/{id}/result -> 422 payment declined: 62500 cents is over the card "
        "limit of 50000",
        "order 3: the workflow gave the 50 widgets back: True",
        "server: stopped; its lifespan stopped the worker and closed the pools",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pattern_example(name: str, dsn: str) -> None:
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONUNBUFFERED="1")
    lines = _run(ROOT / "examples" / name, [], env, timeout=60)
    assert lines == EXPECTED[name]  # exactly: nothing printed twice after a replay


def test_examples_run_twice_on_one_database_start_anew(dsn: str) -> None:
    """Fresh ids per run: a second run neither reuses old events nor finds finished runs."""
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONUNBUFFERED="1")
    for _ in range(2):
        assert (
            _run(ROOT / "examples" / "approval.py", [], env, timeout=60) == EXPECTED["approval.py"]
        )


def test_fastapi_app_leaves_nothing_of_a_request_that_failed_after_starting(dsn: str) -> None:
    """The FastAPI example, given --dsn: its self-demo serves on a real uvicorn and calls it with
    httpx. Then plain SQL checks the rollback case: the sold-out order started its run in the
    request's transaction (the table's insert counter counts the rolled-back row) and neither
    that run nor the order row survived the failed request."""
    env = {k: v for k, v in os.environ.items() if k != "PGDURABLE_DSN"}
    env["PYTHONUNBUFFERED"] = "1"
    lines = _run(ROOT / "examples" / "fastapi_app.py", ["--dsn", dsn], env, timeout=90)
    assert lines == ["database: the database given with --dsn", *EXPECTED["fastapi_app.py"][1:]]

    orders = query(dsn, "select sku, quantity, status from shop_orders order by quantity")
    assert orders == [("widget", 2, "shipped"), ("widget", 50, "declined")]
    runs = query(
        dsn,
        "select input->'args'->>1, status from pgdurable.runs where workflow_name = 'fulfil_order'",
    )
    assert sorted(runs) == [("widget", "completed"), ("widget", "failed")]
    stock = dict(query(dsn, "select sku, in_stock from shop_stock"))
    assert stock == {"widget": 1_000_000 - 2, "gadget": 0}

    def runs_inserted() -> int:
        n = scalar(
            dsn,
            "select n_tup_ins from pg_stat_user_tables "
            "where schemaname = 'pgdurable' and relname = 'runs'",
        )
        return int(n or 0)

    # The example's connections have closed; their statistics reach the server as they exit.
    wait_until(
        "the rolled-back start among the 3 inserts counted in pgdurable.runs",
        lambda: runs_inserted() >= 3,
        30,
    )
    assert runs_inserted() == 3  # orders 1 and 3, and the one rolled back with order 2
