"""The state of one executing run: its history, the replay cursor and its flags. No I/O here."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ._errors import Cancelled, NonDeterminismError, NotInWorkflow

if TYPE_CHECKING:
    import psycopg

    from ._leases import Held
    from ._runtime import Runtime


class Suspended(BaseException):
    """Unwinds a workflow whose run was just suspended in the database (sleep, retry, wait).

    A BaseException so that a user's ``except Exception`` cannot swallow it.
    """


class Released(BaseException):
    """Unwinds a workflow whose run is being handed back (worker shutdown or lost lease) or
    parked (``park``: a pause was requested)."""

    def __init__(self, reason: str, lost: bool = False, park: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lost = lost
        self.park = park


@dataclass
class Record:
    """One checkpoint as loaded with the claim."""

    seq: int
    key: str
    kind: str
    name: str
    output: Any
    error: dict[str, Any] | None


@dataclass
class RunContext:
    app: Runtime
    run_id: UUID
    workflow_id: str
    workflow_name: str
    attempt: int
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
    history: dict[int, Record]
    held: Held
    # what carries out this run's requests (_drive.py): SyncDriver or AsyncDriver
    driver: Any = None
    retry_step_key: str | None = None
    retry_step_attempts: int = 0
    seq: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    in_step: bool = False
    # which attempt of the running step this is, for per-attempt counters (stream writes)
    step_attempt: int = 0
    stop_requested: threading.Event | None = None
    compensating: bool = False
    compensations: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = field(
        default_factory=list
    )

    def next_op(self, kind: str, name: str) -> tuple[int, str, Record | None]:
        """Advance the cursor: the position, the step key and the recorded result if any."""
        seq = self.seq
        self.seq += 1
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        key = name if n == 1 else f"{name}#{n}"
        rec = self.history.get(seq)
        if rec is not None and (rec.name != name or rec.kind != kind):
            raise NonDeterminismError(
                f"run {self.run_id} ({self.workflow_name}): at position {seq} the code called "
                f"{kind} {name!r} but the run's history recorded {rec.kind} {rec.name!r} there. "
                "The workflow code changed while this run was in flight: deploy the old code "
                "for it, or guard the change with pgdurable.patched()"
            )
        return seq, key, rec

    @property
    def is_async(self) -> bool:
        return bool(self.driver.is_async)

    def sync_driver(self, what: str) -> Any:
        """The driver for a sync durable call; an async run refuses it (it would block)."""
        if self.driver.is_async:
            raise TypeError(
                f"{what}() is the sync form, and this workflow is async: "
                f"`await {what}_async(...)` instead"
            )
        return self.driver

    def async_driver(self, what: str) -> Any:
        """The driver for an ``_async`` durable call; a sync run refuses it."""
        if not self.driver.is_async:
            raise TypeError(
                f"{what}() is the async form, and this workflow is a plain (sync) "
                f"one: call {what.removesuffix('_async')}() instead"
            )
        return self.driver

    def check_alive(self) -> None:
        """Called before each new durable operation: stop here if the run must not go on."""
        if self.held.lost:
            raise Released("lease lost", lost=True)
        if self.held.cancel_requested and not self.compensating:
            raise Cancelled(f"run {self.run_id} was cancelled")
        if self.held.pause_requested and not self.compensating:
            raise Released("paused", park=True)
        if self.stop_requested is not None and self.stop_requested.is_set():
            raise Released("worker shutting down")


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "pgdurable_run", default=None
)


def current() -> RunContext | None:
    ctx = _current.get()
    return None if ctx is None or ctx.in_step else ctx


def require(what: str) -> RunContext:
    ctx = current()
    if ctx is None:
        raise NotInWorkflow(
            f"pgdurable.{what}() only works inside a workflow (a function decorated with "
            "@app.workflow() and run by pgdurable); outside one there is no run to record it in"
        )
    return ctx
