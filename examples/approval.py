"""Human approval with a timeout and a reminder, as plain linear code.

    PGDURABLE_DSN=postgresql://... python examples/approval.py

An expense needs a manager's decision. The workflow asks, then waits durably for the event
``decision:<expense id>``. If nobody answers in time it sends a reminder and waits again. The
waiting run holds no worker; the decision is emitted from "outside" (here: this script, in real
life a web handler or ``select pgdurable.emit_event(...)`` in psql) and wakes it at once.

Three expenses show the three endings: decided before the workflow even waited (events are
durable facts, so nothing is lost), approved after a reminder, and withdrawn (cancelled).
The timeouts are 1 second so the example finishes quickly; real ones would be days.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pgdurable

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database

FIRST_WAIT = 1.0  # seconds; think "2 days"
SECOND_WAIT = 30.0  # seconds; think "5 more days"


@app.step()
def ask_manager(expense_id: str, cents: int) -> str:
    """Send the approval request (an email or a chat message in real life)."""
    return f"please approve expense {expense_id} of {cents / 100:.2f} EUR"


@app.step()
def send_reminder(expense_id: str) -> str:
    return f"reminder: expense {expense_id} is still waiting for you"


@app.workflow()
def expense_approval(expense_id: str, cents: int) -> dict[str, Any]:
    ask_manager(expense_id, cents)
    event = f"decision:{expense_id}"
    try:
        decision = pgdurable.wait_for_event(event, timeout=FIRST_WAIT)
    except pgdurable.EventTimeout:
        send_reminder(expense_id)
        try:
            decision = pgdurable.wait_for_event(event, timeout=SECOND_WAIT)
        except pgdurable.EventTimeout:
            return {"approved": False, "by": None, "why": "nobody answered"}
    return {
        "approved": bool(decision["approved"]),
        "by": decision["by"],
        "why": decision.get("why", ""),
    }


def history(handle: pgdurable.RunHandle[Any]) -> str:
    """The run's checkpoints in a form that does not depend on the random expense ids."""
    parts = []
    for cp in handle.steps():
        if cp["kind"] == "event":
            parts.append("event(timed out)" if cp["error"] else "event")
        else:
            parts.append(cp["step_name"])
    return ", ".join(parts)


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.05)


def decided(handle: pgdurable.RunHandle[Any]) -> str:
    result = handle.result(timeout=30)
    verdict = "approved" if result["approved"] else "denied"
    return f"{verdict} by {result['by']}" + (f" ({result['why']})" if result["why"] else "")


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    batch = uuid.uuid4().hex[:8]  # fresh ids, so running the example twice starts anew

    worker = app.worker(concurrency=4, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # 1. The manager answers before the workflow waits: the event is not lost.
        bob_says = {"approved": False, "by": "bob", "why": "over budget"}
        app.emit_event(f"decision:{batch}-1", bob_says)
        first = expense_approval.start(f"{batch}-1", 125000)
        print(f"expense 1: {decided(first)}")
        print(f"  history: {history(first)}")

        # 2. Nobody answers within the first wait: a reminder goes out, then ann approves.
        second = expense_approval.start(f"{batch}-2", 4200)
        wait_for(
            "the reminder",
            lambda: "send_reminder" in history(second) and second.status() == "waiting",
        )
        print(
            f"expense 2: no answer within {FIRST_WAIT:g} s, reminder sent, status {second.status()}"
        )
        app.emit_event(f"decision:{batch}-2", {"approved": True, "by": "ann"})
        print(f"expense 2: {decided(second)}")
        print(f"  history: {history(second)}")

        # 3. The employee withdraws the expense while it waits: cancel it.
        third = expense_approval.start(f"{batch}-3", 900)
        wait_for("the third expense to wait", lambda: third.status() == "waiting")
        print(f"expense 3: withdrawn, cancel() -> {third.cancel()}")
        try:
            third.result(timeout=10)
        except pgdurable.RunCancelled:
            print(f"expense 3: status {third.status()}")
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()


if __name__ == "__main__":
    main()
