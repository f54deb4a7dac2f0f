"""A benchmark worker process: ``python -m bench.worker --dsn DSN --queues w2 --concurrency 8``.

With ``--async-concurrency N`` it runs the async workflows (``bench.apps.build_async``) on its
async lane instead, up to N at once (on ``--async-connections``, default the Worker's);
SIGUSR1 then releases the runs held in a step (A1000).
``--application-name`` tags every connection of the process, so the harness can count them.
``--queue-concurrency N`` declares each of its queues with ``app.queue(name, concurrency=N)``,
which the worker writes to the database when it starts (W2L).

Runs until SIGTERM (graceful stop). Prints ``ready`` once it is claiming.
"""

from __future__ import annotations

import argparse
import signal

from psycopg.conninfo import make_conninfo

import pgdurable
from bench.apps import build, build_async, release_held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queues", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--async-concurrency", type=int, default=None)
    parser.add_argument("--async-connections", type=int, default=None)
    parser.add_argument("--application-name", default=None)
    parser.add_argument("--queue-concurrency", type=int, default=None)
    args = parser.parse_args()
    dsn = args.dsn
    if args.application_name:
        dsn = make_conninfo(dsn, application_name=args.application_name)
    queues = args.queues.split(",")
    if args.async_concurrency is None:
        app = build(dsn).app
        if args.queue_concurrency is not None:
            for queue in queues:
                app.queue(queue, concurrency=args.queue_concurrency)
        worker = app.worker(concurrency=args.concurrency, queues=queues)
    else:
        app = build_async(dsn).app
        signal.signal(signal.SIGUSR1, lambda _sig, _frame: release_held())
        worker = pgdurable.Worker(
            app,
            concurrency=args.concurrency,
            queues=queues,
            async_concurrency=args.async_concurrency,
            async_connections=args.async_connections,
        )
    print("ready", flush=True)
    try:
        worker.run()
    finally:
        app.close()


if __name__ == "__main__":
    main()
