"""A nightly report on a cron schedule in a time zone, fired once per night by whichever worker
sees it first, with "run now" for the impatient.

    PGDURABLE_DSN=postgresql://... python examples/nightly_report.py

``app.schedule(...)`` declares it; the worker writes it to pgdurable.schedules when it starts
and fires it from then on (every worker checks once a second; the workflow id
``schedule:<name>:<tick>`` makes each night one run, however many workers there are). After
downtime, catchup="latest" starts one run for the missed nights; overlap="skip" starts none
while last night's report still runs.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pgdurable

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database
BERLIN = ZoneInfo("Europe/Berlin")
NAME = f"nightly-report-{uuid.uuid4().hex[:8]}"  # fresh, so running the example twice starts anew


@app.step()
def sales_of_yesterday() -> dict[str, Any]:
    return {"orders": 3, "cents": 12050}  # a query of your own in real life


@app.step()
def send_report(summary: str) -> str:
    return f"mailed: {summary}"


@app.workflow()
def nightly_report() -> str:
    sales = sales_of_yesterday()
    return send_report(f"{sales['orders']} orders, {sales['cents'] / 100:.2f} EUR")


app.schedule(
    nightly_report,
    cron="0 2 * * *",
    tz="Europe/Berlin",
    name=NAME,
    catchup="latest",
    overlap="skip",
)


def schedule(conn: Any) -> tuple[Any, ...]:
    row = conn.execute(
        "select next_fire_at, pgdurable.now(), last_run_id from pgdurable.schedules "
        "where name = %s",
        (NAME,),
    ).fetchone()
    return tuple(row) if row else (None, None, None)


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    worker = app.worker(concurrency=2, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with app.connect() as conn:
            deadline = time.monotonic() + 30
            while schedule(conn)[0] is None:  # a worker computes the first tick
                if time.monotonic() > deadline:
                    raise SystemExit("no worker armed the schedule")
                time.sleep(0.05)
            next_at, now, _ = schedule(conn)
            local = next_at.astimezone(BERLIN)
            print(f"schedule: {local:%H:%M} Europe/Berlin every night")
            print(f"next run within a day: {timedelta(0) < next_at - now <= timedelta(days=1)}")
            (run_id,) = conn.execute("select pgdurable.trigger_schedule(%s)", (NAME,)).fetchone()
            print("run now: started")
            print(f"result: {app.handle(str(run_id)).result(timeout=30)}")
            workflow_id = app.handle(str(run_id)).workflow_id
            print(f"its workflow id: schedule:<name>:now:... {workflow_id.startswith('schedule:')}")
            print(f"next run unchanged: {schedule(conn)[0] == next_at}")
            conn.execute("select pgdurable.delete_schedule(%s)", (NAME,))
            print("schedule deleted (its runs stay)")
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()


if __name__ == "__main__":
    main()
