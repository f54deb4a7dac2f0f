"""Start options of a run, checked at the call and turned into start_run's JSON. Pure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ._durations import seconds
from ._names import check_queue, check_text


class StartOptions:
    """What ``wf.options(...)`` and ``app.start(..., **options)`` accept."""

    __slots__ = (
        "concurrency_key",
        "debounce",
        "debounce_key",
        "debounce_max_wait",
        "dedup_key",
        "delay",
        "max_recoveries",
        "on_conflict",
        "parent_id",
        "priority",
        "queue",
        "require_registered",
        "timeout",
        "workflow_id",
    )

    def __init__(
        self,
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        on_conflict: str | None = None,
        timeout: float | timedelta | None = None,
        max_recoveries: int | None = None,
        parent_id: str | None = None,
        concurrency_key: str | None = None,
        dedup_key: str | None = None,
        debounce: float | timedelta | None = None,
        debounce_key: str | None = None,
        debounce_max_wait: float | timedelta | None = None,
    ) -> None:
        if on_conflict not in (None, "return", "raise"):
            raise ValueError(f"on_conflict must be 'return' or 'raise', got {on_conflict!r}")
        if queue is not None:
            check_queue(queue)
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if priority is not None and not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority must fit in 32 bits, got {priority}")
        if max_recoveries is not None and (
            isinstance(max_recoveries, bool)
            or not isinstance(max_recoveries, int)
            or not 0 <= max_recoveries <= 10_000
        ):
            raise ValueError(
                f"max_recoveries must be an int from 0 to 10000, got {max_recoveries!r}"
            )
        if workflow_id is not None:
            check_text("workflow_id", str(workflow_id))
        if concurrency_key is not None:
            check_text("concurrency_key", concurrency_key)
        if dedup_key is not None:
            check_text("dedup_key", dedup_key)
        self.concurrency_key = concurrency_key
        self.dedup_key = dedup_key
        self.debounce = seconds(debounce, "debounce", exclusive_minimum=True)
        self.debounce_max_wait = seconds(debounce_max_wait, "debounce_max_wait")
        if debounce_key is not None:
            check_text("debounce_key", debounce_key)
        self.debounce_key = debounce_key
        if (self.debounce is None) != (debounce_key is None):
            raise ValueError(
                "debounce and debounce_key go together: starts with the same key within "
                "`debounce` collapse into one run"
            )
        if self.debounce_max_wait is not None and self.debounce is None:
            raise ValueError("debounce_max_wait needs debounce and debounce_key")
        if self.debounce is not None and (workflow_id is not None or delay is not None):
            raise ValueError(
                "debounce collapses starts into one run: it takes no workflow_id (each start "
                "would name another run) and no delay (the window is the delay)"
            )
        self.workflow_id = workflow_id
        self.queue = queue
        self.priority = priority
        self.delay = seconds(delay, "delay")
        self.timeout = seconds(timeout, "timeout", exclusive_minimum=True)
        self.on_conflict = on_conflict
        self.max_recoveries = max_recoveries
        self.parent_id = parent_id
        self.require_registered = False

    def copy(self) -> StartOptions:
        """A copy to fill in per call (a child's workflow id), leaving a reused
        ``wf.options(...)`` as it was."""
        twin = StartOptions.__new__(StartOptions)
        for name in StartOptions.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    def to_json(self, default_queue: str | None, default_recoveries: int | None) -> dict[str, Any]:
        # no queue at all: start_run uses the one the workflow's workers registered
        out: dict[str, Any] = {}
        if self.queue or default_queue:
            out["queue"] = self.queue or default_queue
        if self.workflow_id is not None:
            out["workflow_id"] = str(self.workflow_id)
        for key in (
            "priority",
            "delay",
            "on_conflict",
            "timeout",
            "parent_id",
            "concurrency_key",
            "dedup_key",
            "debounce",
            "debounce_key",
            "debounce_max_wait",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        recoveries = self.max_recoveries if self.max_recoveries is not None else default_recoveries
        if recoveries is not None:
            out["max_recoveries"] = recoveries
        if self.require_registered:
            out["require_registered"] = True
        return out
