"""A worker in a thread of the test process, and waiting until the runs it serves are idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from .._queries import Q

if TYPE_CHECKING:
    from .. import App, Worker


class DurableWorker:
    """A ``pgdurable`` worker of ``app`` running in a thread for the duration of a test.

    ``start()`` (re)starts it with other options; ``stop()`` hands its runs back, like SIGTERM
    does; ``drain()`` returns once nothing it can run is left to do now.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DurableWorker {state} queues={self.queues}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queues(self) -> list[str]:
        return list(self.worker.queues) if self.worker is not None else []

    def start(
        self,
        *,
        concurrency: int = 4,
        queues: Iterable[str] | None = None,
        poll_interval: float = 0.05,
    ) -> DurableWorker:
        """Start the worker (stopping the current one first). Its queues default to those of
        the workflows the App registers now."""
        if self._thread is not None:
            self.stop()
        worker = self.app.worker(concurrency, queues=queues, poll_interval=poll_interval)
        errors: list[BaseException] = []
        self._errors = errors

        def target() -> None:
            try:
                worker.run()
            except BaseException as exc:  # re-raised in the test by stop() or drain()
                errors.append(exc)

        thread = threading.Thread(target=target, name="pgdurable-test-worker", daemon=True)
        thread.start()
        self.worker, self._thread = worker, thread
        if not worker.ready.wait(30):
            self._raise_errors()
            raise RuntimeError("the test worker did not start within 30 s")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop claiming and hand current runs back at their next durable operation."""
        if self.worker is None or self._thread is None:
            return
        self.worker.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(
                f"the test worker did not stop within {timeout} s: a step of one of its runs "
                "is still busy (blocked on something the test never released?)"
            )
        self._thread = None
        self._raise_errors()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until no run is running and none is due on a queue and workflow this worker
        serves: every run has finished, or sleeps, waits, or retries later (advance the clock
        for those). Raises TimeoutError naming the busy runs after ``timeout`` seconds."""
        if not self.running:
            self._raise_errors()
            raise RuntimeError("drain() needs a running worker: call durable_worker.start()")
        wait_idle(self.app.dsn, [self], timeout, "drain()")

    def _raise_errors(self) -> None:
        if self._errors:
            raise RuntimeError("the test worker crashed") from self._errors[0]

    def _check_alive(self) -> None:
        if not self.running:
            self._raise_errors()
            raise RuntimeError("the test worker stopped while waiting for its runs")

    def _serves(self) -> tuple[list[str], list[str]]:
        return self.queues, sorted(self.app.workflows)


def wait_idle(dsn: str, workers: Sequence[DurableWorker], timeout: float, what: str) -> None:
    """Poll until no run is running and none is due for ``workers``; the database decides, so
    runs held or started elsewhere count too."""
    queues = sorted({q for w in workers for q in w._serves()[0]})
    workflows = sorted({n for w in workers for n in w._serves()[1]})
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            for w in workers:
                w._check_alive()
            busy = conn.execute(
                Q["testing_busy_runs"], {"queues": queues, "workflows": workflows}
            ).fetchall()
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(_busy_message(what, timeout, busy))
            time.sleep(0.01)


def _busy_message(what: str, timeout: float, busy: list[tuple[Any, ...]]) -> str:
    runs = "; ".join(f"{name} {wid!r} ({status}, run {rid})" for rid, wid, name, status in busy)
    return (
        f"{what} waited {timeout} s, and these runs are still running or due: {runs}. A step "
        "may be blocked or retrying in place, or a workflow may loop; runs pending on a queue "
        "or workflow no test worker serves are not waited for"
    )
