"""A queue with flow control: at most 2 emails in flight across all workers, at most 4 sent in
any second, and each customer's emails one at a time, in the order they were queued.

    PGDURABLE_DSN=postgresql://... python examples/rate_limited_emails.py

The limits live in the database (pgdurable.queues), so they hold across every worker process,
not per worker. Here one worker with 8 slots runs 12 emails for 3 customers; the script then
checks, from what the sends recorded and from plain SQL, that no limit was ever exceeded.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta

import pgdurable

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database

QUEUE = "emails"
app.queue(
    QUEUE,
    concurrency=2,
    rate_limit=pgdurable.Rate(4, per=timedelta(seconds=1)),
    key_concurrency=1,
    key_fifo=True,
)

sending: list[str] = []  # emails being sent right now (this process runs every send)
log: list[tuple[str, int, int]] = []  # (customer, number, how many were in flight)
lock = threading.Lock()


@app.step()
def smtp_send(customer: str, number: int) -> str:
    with lock:
        sending.append(customer)
        log.append((customer, number, len(sending)))
    time.sleep(0.1)  # the mail server's round trip
    with lock:
        sending.remove(customer)
    return f"sent #{number} to {customer}"


@app.workflow(queue=QUEUE)
def send_email(customer: str, number: int) -> str:
    return smtp_send(customer, number)


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    batch = uuid.uuid4().hex[:8]
    customers = [f"{name}-{batch}" for name in ("ada", "bob", "cy")]
    worker = app.worker(concurrency=8, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        handles = [
            send_email.options(concurrency_key=c).start(c, n)
            for n in range(1, 5)
            for c in customers
        ]
        print(f"queued: {len(handles)} emails for {len(customers)} customers")
        for h in handles:
            h.result(timeout=60)
        print(f"sent: {len(log)}")
        print(f"most in flight at once: {max(n for _, _, n in log)} (limit 2)")
        with app.connect() as conn:
            (per_second,) = conn.execute(
                "select max(n) from (select count(*) over (order by started_at range between "
                "current row and interval '999.999 milliseconds' following) as n "
                "from pgdurable.runs where queue_name = %s and input->'args'->>0 = any(%s)) x",
                (QUEUE, customers),
            ).fetchone()
            print(f"most started in any second: {per_second} (limit 4)")
            in_order = all([n for c2, n, _ in log if c2 == c] == [1, 2, 3, 4] for c in customers)
            print(f"each customer's emails in queue order: {in_order}")
            limit, count, period, per_key, fifo, paused = conn.execute(
                "select concurrency, rate_count, rate_period, key_concurrency, key_fifo, paused "
                "from pgdurable.queue_overview where queue_name = %s",
                (QUEUE,),
            ).fetchone()
            print(
                f"pgdurable.queue_overview: concurrency {limit}, rate {count} per "
                f"{period.total_seconds():g} s, per key {per_key}, fifo {fifo}, paused {paused}"
            )
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()


if __name__ == "__main__":
    main()
