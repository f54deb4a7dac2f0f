"""Exceptions raised by pgdurable, and the mapping from the engine's SQLSTATEs."""

from __future__ import annotations

from typing import Any

import psycopg


class PgDurableError(Exception):
    """Base class of every error pgdurable raises."""


class NotInWorkflow(PgDurableError):
    """A durable-only primitive was called outside a workflow."""


class SerializationError(PgDurableError, TypeError):
    """A value cannot be stored as JSON; the message names its path."""


class NonRetryableError(PgDurableError):
    """Raise from a step to fail it at once, without retries."""


class ConcurrentOperations(PgDurableError, RuntimeError):
    """Two durable operations of one async run were awaited at the same time."""


class NonDeterminismError(PgDurableError):
    """Replay met a different operation than the run's history recorded at that position."""


class SchemaMissing(PgDurableError):
    """The pgdurable schema is not installed in the database."""


class SchemaOutdated(PgDurableError):
    """The database schema is older (or newer) than this package expects."""


class SchemaUntrusted(PgDurableError):
    """The installed schema is not this package's own: another owner, or changed functions."""


class ClockShiftDisabled(PgDurableError):
    """``shift_clock`` was called on a database not set up for tests (SQLSTATE PD008)."""


class InvalidInput(PgDurableError, ValueError):
    """The engine rejected an argument or option (SQLSTATE PD003 / PD004)."""


class RunNotFound(PgDurableError, LookupError):
    """No run has that id or workflow_id (SQLSTATE PD001)."""


class WorkflowIdConflict(PgDurableError):
    """The workflow_id is taken by another run (SQLSTATE PD007)."""


class InvalidState(PgDurableError):
    """The run is in a state that does not allow the call (SQLSTATE PD006)."""


class LeaseLost(PgDurableError):
    """This worker no longer holds the run (SQLSTATE PD002); its write was rolled back."""


class Cancelled(PgDurableError):
    """The run was cancelled; raised inside the workflow at its next durable operation."""


class WaitTimeout(PgDurableError, TimeoutError):
    """A durable wait ended by its timeout (recorded: a replay raises it again)."""


class EventTimeout(WaitTimeout):
    """``wait_for_event`` reached its timeout before the event was emitted."""


class MessageTimeout(WaitTimeout):
    """``recv`` reached its timeout before a message arrived."""


class DeadlineExceeded(PgDurableError):
    """The run passed the deadline set by ``options(timeout=...)``."""


class StepFailed(PgDurableError):
    """A step's recorded error, replayed when its original exception type cannot be rebuilt."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class WorkflowFailed(PgDurableError):
    """Raised by ``RunHandle.result()`` when the run failed; carries the remote error."""

    def __init__(self, run_id: str, error: dict[str, Any]) -> None:
        self.run_id = run_id
        self.error_type: str = str(error.get("type") or "Error")
        self.message: str = str(error.get("message") or "")
        self.traceback: str | None = error.get("traceback")
        super().__init__(f"run {run_id} failed: {self.error_type}: {self.message}")


class RunCancelled(Cancelled):
    """Raised by ``RunHandle.result()`` when the run was cancelled."""


_BY_SQLSTATE: dict[str, type[PgDurableError]] = {
    "PD001": RunNotFound,
    "PD002": LeaseLost,
    "PD003": InvalidInput,
    "PD004": InvalidInput,
    "PD005": Cancelled,
    "PD006": InvalidState,
    "PD007": WorkflowIdConflict,
    "PD008": ClockShiftDisabled,
}


def translate(exc: psycopg.Error) -> PgDurableError | None:
    """The pgdurable exception for an engine error, or None for other database errors."""
    cls = _BY_SQLSTATE.get(exc.sqlstate or "")
    if cls is None:
        return None
    diag = exc.diag
    text = diag.message_primary or str(exc)
    if diag.message_hint:
        text = f"{text} ({diag.message_hint})"
    return cls(text)
