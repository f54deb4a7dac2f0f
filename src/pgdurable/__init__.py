"""pgdurable: durable execution for Python with PostgreSQL as the only infrastructure.

SemVer covers ``__all__``, the ``pgdurable`` CLI and the SQL functions documented in
docs/reference/sql.md.
"""

from ._app import App
from ._codec import Limits
from ._context import _current
from ._definitions import Step, Transaction, Workflow, WorkflowCall
from ._errors import (
    Cancelled,
    ClockShiftDisabled,
    ConcurrentOperations,
    DeadlineExceeded,
    EventTimeout,
    InvalidInput,
    InvalidState,
    LeaseLost,
    MessageTimeout,
    NonDeterminismError,
    NonRetryableError,
    NotInWorkflow,
    PgDurableError,
    RunCancelled,
    RunNotFound,
    SchemaMissing,
    SchemaOutdated,
    SchemaUntrusted,
    SerializationError,
    StepFailed,
    WaitTimeout,
    WorkflowFailed,
    WorkflowIdConflict,
)
from ._handle import RunHandle
from ._queues import QueueLimits, Rate
from ._remote_errors import register_error
from ._retry import Retry
from ._sagas import compensate, compensate_async, patched, patched_async
from ._schema import SCHEMA_VERSION, schema_sql
from ._steps import (
    now,
    now_async,
    random,
    random_async,
    sleep,
    sleep_async,
    sleep_until,
    sleep_until_async,
    uuid4,
    uuid4_async,
)
from ._stream_writes import close_stream, close_stream_async, write_stream, write_stream_async
from ._waiting import (
    gather,
    gather_async,
    recv,
    recv_async,
    wait_for_event,
    wait_for_event_async,
)
from ._worker import Worker

__version__ = "0.1.0"


class RunInfo:
    """What ``current_run()`` returns: ids to make external calls idempotent."""

    __slots__ = ("attempt", "run_id", "workflow_id", "workflow_name")

    def __init__(self, run_id: str, workflow_id: str, workflow_name: str, attempt: int) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"RunInfo(run_id={self.run_id!r}, workflow_id={self.workflow_id!r})"


def current_run() -> RunInfo | None:
    """The run executing this code (inside a workflow or one of its steps), else None."""
    ctx = _current.get()
    if ctx is None:
        return None
    return RunInfo(str(ctx.run_id), ctx.workflow_id, ctx.workflow_name, ctx.attempt)


__all__ = [
    "SCHEMA_VERSION",
    "App",
    "Cancelled",
    "ClockShiftDisabled",
    "ConcurrentOperations",
    "DeadlineExceeded",
    "EventTimeout",
    "InvalidInput",
    "InvalidState",
    "LeaseLost",
    "Limits",
    "MessageTimeout",
    "NonDeterminismError",
    "NonRetryableError",
    "NotInWorkflow",
    "PgDurableError",
    "QueueLimits",
    "Rate",
    "Retry",
    "RunCancelled",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "SchemaMissing",
    "SchemaOutdated",
    "SchemaUntrusted",
    "SerializationError",
    "Step",
    "StepFailed",
    "Transaction",
    "WaitTimeout",
    "Worker",
    "Workflow",
    "WorkflowCall",
    "WorkflowFailed",
    "WorkflowIdConflict",
    "close_stream",
    "close_stream_async",
    "compensate",
    "compensate_async",
    "current_run",
    "gather",
    "gather_async",
    "now",
    "now_async",
    "patched",
    "patched_async",
    "random",
    "random_async",
    "recv",
    "recv_async",
    "register_error",
    "schema_sql",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "uuid4",
    "uuid4_async",
    "wait_for_event",
    "wait_for_event_async",
    "write_stream",
    "write_stream_async",
]
