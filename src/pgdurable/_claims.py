"""A claimed run as the claim functions return it, and how many to claim. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class Claim:
    """One row of claim_runs / claim_run; the input is still JSON text, decoded per run."""

    run_id: UUID
    workflow_id: str
    workflow_name: str
    queue: str
    input_text: str
    attempt: int
    retry_step_key: str | None
    retry_step_attempts: int
    has_history: bool
    cancel_requested: bool
    # the starter's W3C trace headers as JSON text (start option trace_context), or None
    trace_context_text: str | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Claim:
        (
            run_id,
            workflow_id,
            name,
            queue,
            text,
            attempt,
            _deadline,
            key,
            tries,
            hist,
            cancel,
            trace,
        ) = row
        return cls(run_id, workflow_id, name, queue, text, attempt, key, tries, hist, cancel, trace)

    def log_fields(self, **more: Any) -> dict[str, Any]:
        fields = {
            "run_id": str(self.run_id),
            "workflow_id": self.workflow_id,
            "workflow": self.workflow_name,
            "queue": self.queue,
            "attempt": self.attempt,
        }
        fields.update(more)
        return fields


def claim_size(concurrency: int, active: int, deep: bool) -> int:
    """How many runs a worker of ``concurrency`` threads, ``active`` runs held, claims now (0:
    wait). With a shallow queue, one per free thread, at once. With a deep one (the last claim
    got all it asked for) it also holds up to ``concurrency`` claimed runs queued for its
    threads, and claims only when a thread is free or half of that room is: several runs per
    claim's round trip and commit instead of one per finished run, while no thread waits for a
    claim. Queued runs are leased and heartbeated like running ones; a stopping worker hands
    each back at its first durable operation."""
    free = concurrency - active
    if not deep:
        return max(free, 0)
    room = 2 * concurrency - active
    return room if free > 0 or room >= max(1, concurrency // 2) else 0
