"""A payment saga: every step that changes the world registers its undo action.

    PGDURABLE_DSN=postgresql://... python examples/saga.py

An order reserves stock, charges the card and books a courier. After each successful step the
workflow calls ``pgdurable.compensate(undo_step, ...)``. When a later step fails for good, the
registered compensations run durably, newest first, each as a retried step, and the run ends
failed with the original error. A worker crash in the middle of undoing resumes the undoing
where it stopped: each compensation runs once.

Two orders: one where a courier is available (nothing to undo) and one where none is.
"""

from __future__ import annotations

import os
import threading
import uuid

import pgdurable

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database


def say(line: str) -> None:
    print(f"  {line}", flush=True)


@app.step()
def reserve_stock(item: str, qty: int) -> str:
    say(f"reserve {qty} x {item}")
    return f"res-{item}"


@app.step()
def release_stock(reservation: str) -> None:
    say(f"undo: release {reservation}")


@app.step()
def charge_card(cents: int) -> str:
    say(f"charge {cents} cents")
    return f"ch-{cents}"


@app.step(retry=pgdurable.Retry(max_attempts=5, initial_delay=0.05))
def refund_card(charge_id: str) -> None:
    say(f"undo: refund {charge_id}")


@app.step()
def book_courier(city: str) -> str:
    if city == "Atlantis":
        raise pgdurable.NonRetryableError(f"no courier delivers to {city}")
    say(f"book courier to {city}")
    return f"courier-{city}"


@app.workflow()
def place_order(item: str, qty: int, cents: int, city: str) -> str:
    reservation = reserve_stock(item, qty)
    pgdurable.compensate(release_stock, reservation)
    charge = charge_card(cents)
    pgdurable.compensate(refund_card, charge)
    return book_courier(city)  # the last step needs no undo


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    batch = uuid.uuid4().hex[:8]

    worker = app.worker(concurrency=2, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        for n, city in enumerate(["Lyon", "Atlantis"], start=1):
            print(f"order {n}: 2 x widget, 2500 cents, to {city}", flush=True)
            handle = place_order.options(workflow_id=f"order-{batch}-{n}").start(
                "widget", 2, 2500, city
            )
            try:
                print(f"order {n}: completed, {handle.result(timeout=30)}")
            except pgdurable.WorkflowFailed as exc:
                print(f"order {n}: {handle.status()} with {exc.error_type}: {exc.message}")
            undone = [cp["step_key"] for cp in handle.steps() if cp["step_key"].startswith("undo:")]
            print(f"order {n}: compensations recorded: {', '.join(undone) or 'none'}")
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()


if __name__ == "__main__":
    main()
