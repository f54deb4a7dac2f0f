"""Runs a worker of a test app in this process: ``python -m apps.run_worker apps.crash_app [N]``.

The app module must define ``build(dsn) -> pgdurable.App``; the DSN comes from $PGDURABLE_DSN.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import signal
import sys


def main(argv: list[str]) -> None:
    # A test that finds this process hung sends SIGUSR2: every thread's stack goes to the log.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    # A SIGTERM that arrives while the app is still being imported stops the worker cleanly
    # (exit 0) instead of killing the process; the worker installs its own handler in run().
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(threadName)s %(name)s: %(message)s",
    )
    module = importlib.import_module(argv[0])
    concurrency = int(argv[1]) if len(argv) > 1 else 2
    app = module.build(os.environ["PGDURABLE_DSN"])
    try:
        worker = app.worker(concurrency=concurrency, poll_interval=0.05)
        if not early:
            worker.run()
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1:])
