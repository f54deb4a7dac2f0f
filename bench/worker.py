"""A benchmark worker process: ``python -m bench.worker --dsn DSN --queues w2 --concurrency 8``.

Runs until SIGTERM (graceful stop). Prints ``ready`` once it is claiming.
"""

from __future__ import annotations

import argparse

from bench.apps import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queues", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    bench = build(args.dsn)
    worker = bench.app.worker(concurrency=args.concurrency, queues=args.queues.split(","))
    print("ready", flush=True)
    try:
        worker.run()
    finally:
        bench.app.close()


if __name__ == "__main__":
    main()
