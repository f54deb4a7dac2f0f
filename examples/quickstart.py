"""pgdurable quickstart: one order goes through a durable, multi-step workflow.

    python examples/quickstart.py                  # $PGDURABLE_DSN, else the embedded PostgreSQL
    python examples/quickstart.py --dsn postgresql://user@host/db

The workflow charges a card (a deterministic stand-in for a payment API), records the order in
an application table in the same transaction as its checkpoint, sleeps durably, and sends a
receipt. A worker running in a background thread executes it; the script then prints the
result and the run's checkpoints, as they are stored in the pgdurable.checkpoints table.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import uuid
from typing import Any

import psycopg

import pgdurable


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: $PGDURABLE_DSN, else embedded)")
    parser.add_argument("--order-id", help="order id (default: a fresh one, so re-runs start anew)")
    parser.add_argument("--cents", type=int, default=4200, help="amount to charge (default 4200)")
    return parser.parse_args(argv)


# Parsed here because the decorators below need the App; importing this module (for example
# `pgdurable worker examples.quickstart:app`) ignores the command line.
ARGS = _arguments() if __name__ == "__main__" else _arguments([])

app = pgdurable.App(ARGS.dsn)


@app.step(retry=pgdurable.Retry(max_attempts=5, initial_delay=0.2, max_delay=2))
def charge(order_id: str, cents: int) -> dict[str, Any]:
    """Charge the customer. A real payment API call goes here, with an idempotency key:
    steps are at-least-once, so a crash after the call and before the checkpoint repeats it."""
    run = pgdurable.current_run()
    assert run is not None
    idempotency_key = f"{run.workflow_id}:charge"  # what a real API would deduplicate on
    return {"charge_id": f"ch_{order_id}", "cents": cents, "key": idempotency_key}


@app.transaction()
def record_order(conn: psycopg.Connection[Any], order_id: str, charge_id: str, cents: int) -> int:
    """Write the order. This runs inside a transaction in which pgdurable also commits the
    step's checkpoint: the row exists exactly once, even if the worker crashes and retries."""
    conn.execute(
        """
        create table if not exists pgdurable_quickstart_orders (
            order_id   text primary key,
            charge_id  text not null,
            cents      integer not null,
            created_at timestamptz not null default now()
        )
        """
    )
    cur = conn.execute(
        "insert into pgdurable_quickstart_orders (order_id, charge_id, cents) values (%s, %s, %s)",
        (order_id, charge_id, cents),
    )
    return cur.rowcount


@app.step()
def send_receipt(order_id: str, charge_id: str) -> str:
    """Email the receipt (printed here). At-least-once, like every step."""
    return f"receipt for {order_id} ({charge_id})"


@app.workflow(queue="orders")
def process_order(order_id: str, cents: int) -> dict[str, Any]:
    paid = charge(order_id, cents)  # runs once; a replay returns the recorded result
    record_order(order_id, paid["charge_id"], cents)  # exactly-once database write
    pgdurable.sleep(0.5)  # the run leaves the worker; a timer wakes it up
    receipt = send_receipt(order_id, paid["charge_id"])
    return {
        "order_id": order_id,
        "charge_id": paid["charge_id"],
        "status": "shipped",
        "receipt": receipt,
    }


def _where() -> str:
    if ARGS.dsn:
        return "the database given with --dsn"
    if os.environ.get("PGDURABLE_DSN"):
        return "the database in $PGDURABLE_DSN"
    home = os.environ.get("PGDURABLE_HOME", "~/.local/share/pgdurable")
    return f"the embedded PostgreSQL in {home}/pgdata"


def main() -> None:
    print(f"database: {_where()}")
    app.init_schema()  # what `pgdurable init` does; a no-op when the schema is current
    print(f"schema: version {pgdurable.SCHEMA_VERSION} ready")

    order_id = ARGS.order_id or f"o-{uuid.uuid4().hex[:8]}"
    handle = process_order.options(workflow_id=f"order-{order_id}").start(order_id, ARGS.cents)
    print(f"started: workflow_id={handle.workflow_id}")

    worker = app.worker(concurrency=2)
    thread = threading.Thread(target=worker.run, name="quickstart-worker", daemon=True)
    thread.start()
    try:
        result = handle.result(timeout=60)
    finally:
        worker.stop()
        thread.join(timeout=30)
    print("worker: stopped")

    print(f"status: {handle.status()}")
    print(f"result: {json.dumps(result, sort_keys=True)}")
    print("checkpoints:")
    for cp in handle.steps():
        print(f"  {cp['seq']}  {cp['kind']:<11}  {cp['step_key']:<12}  attempts={cp['attempts']}")
    with app.connect() as conn:
        row = conn.execute(
            "select count(*) from pgdurable_quickstart_orders where order_id = %s", (order_id,)
        ).fetchone()
    print(f"orders rows for {order_id}: {row[0] if row else 0}")
    app.close()


if __name__ == "__main__":
    main()
