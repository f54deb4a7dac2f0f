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
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(threadName)s %(name)s: %(message)s",
    )
    module = importlib.import_module(argv[0])
    concurrency = int(argv[1]) if len(argv) > 1 else 2
    app = module.build(os.environ["PGDURABLE_DSN"])
    try:
        app.worker(concurrency=concurrency, poll_interval=0.05).run()
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1:])
