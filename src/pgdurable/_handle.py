"""RunHandle: look at, wait for and operate one run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import _codec
from ._context import current
from ._db import call_sql
from ._durations import seconds
from ._errors import RunCancelled, RunNotFound, WorkflowFailed
from ._queries import Q
from ._waiting import wait_result

if TYPE_CHECKING:
    from ._runtime import Runtime

R = TypeVar("R")

FINISHED = frozenset({"completed", "failed", "cancelled"})


class RunHandle(Generic[R]):
    """A reference to one run. Cheap to create; every method reads the database."""

    def __init__(
        self, app: Runtime, run_id: UUID | str, workflow_id: str, workflow_name: str
    ) -> None:
        self.app = app
        self.run_id = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name

    def __repr__(self) -> str:
        name, key = self.workflow_name, self.workflow_id
        return f"<RunHandle {name} workflow_id={key!r} run_id={self.run_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    def _state(self) -> tuple[str, Any, Any]:
        with self.app.pool.connection() as conn:
            return _read(conn, self.run_id, self.app)

    def status(self) -> str:
        """pending, running, sleeping, waiting, completed, failed or cancelled."""
        return self._state()[0]

    def _outcome(self, status: str, output: Any, error: Any) -> R:
        if status == "completed":
            result: R = output
            return result
        if status == "cancelled":
            raise RunCancelled(f"run {self.run_id} ({self.workflow_id}) was cancelled")
        raise WorkflowFailed(str(self.run_id), error or {})

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish: its output, or WorkflowFailed / RunCancelled.

        Raises TimeoutError after ``timeout`` seconds (None waits forever). Woken by
        LISTEN/NOTIFY when the run ends, with polling as the fallback.
        """
        ctx = current()
        if ctx is not None:
            if timeout is not None:
                raise ValueError(
                    "inside a workflow result() waits durably and takes no timeout: give the "
                    "child a deadline with .options(timeout=...) instead"
                )
            return wait_result(ctx, self)
        timeout = seconds(timeout, "result() timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        status, output, error = self._state()
        if status in FINISHED:
            return self._outcome(status, output, error)
        wanted = str(self.run_id)
        with self.app.connect() as conn:
            conn.execute(Q["listen_done"])
            while True:
                status, output, error = _read(conn, self.run_id, self.app)
                if status in FINISHED:
                    return self._outcome(status, output, error)
                wait = 1.0
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError(
                            f"run {self.run_id} ({self.workflow_id}) is still {status} after "
                            f"{timeout} s; it goes on: call result() again to keep waiting"
                        )
                for note in conn.notifies(timeout=wait):
                    if note.payload == wanted:
                        break

    def cancel(self) -> str:
        """Cancel the run (and its unfinished children). Returns the status it ends up in:
        'cancelled', 'cancelling' (a worker will stop it at its next durable operation), or the
        final status of a run that had already finished."""
        with self.app.pool.connection() as conn:
            return str(call_sql(conn, "cancel_run", (self.run_id,)).fetchone()[0])

    def resume(self) -> None:
        """Restart a failed or cancelled run from its last checkpoint."""
        with self.app.pool.connection() as conn:
            call_sql(conn, "resume_run", (self.run_id,))

    def steps(self) -> list[dict[str, Any]]:
        """The run's checkpoints, in order: one dict per completed durable operation."""
        with self.app.pool.connection() as conn:
            cur = conn.execute(Q["run_steps"], (self.run_id,))
            cols = [c.name for c in cur.description or ()]
            steps = [dict(zip(cols, row, strict=False)) for row in cur.fetchall()]
        for step in steps:
            for field in ("output", "error"):
                what = f"{field} of checkpoint {step['step_key']!r} of run {self.run_id}"
                step[field] = _codec.loads(step[field], what, self.app.limits)
        return steps


def _read(conn: Any, run_id: UUID, app: Runtime) -> tuple[str, Any, Any]:
    row = conn.execute(Q["run_state"], (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"run {run_id} no longer exists (deleted by retention?)")
    output = _codec.loads(row[1], f"output of run {run_id}", app.limits)
    error = _codec.loads(row[2], f"error of run {run_id}", app.limits)
    return row[0], output, error
