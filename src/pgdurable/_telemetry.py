"""The observer seam: what the executor, the plans and the worker tell metrics and tracing.

``observer`` is None unless a worker turned metrics or tracing on (``install``), so the hot
path pays one module attribute check per attempt and per step when both are off. Observers are
called from inside the plans (_executor.py, _steps.py), which run in the thread or task that
executes the run: a tracing observer can make its span the current one there, and a sync and an
async run produce the same calls. This module imports no optional package; _metrics.py and
_tracing.py do, lazily.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ._context import Released, Suspended
from ._errors import Cancelled, LeaseLost

if TYPE_CHECKING:
    from ._claims import Claim
    from ._context import RunContext
    from ._ops import Plan


class Observer:
    """The hooks; each does nothing here. A hook must not raise (the fan-out guards anyway)."""

    def attempt_started(self, claim: Claim) -> Any:
        """A claimed run starts executing; the value comes back to ``attempt_ended``."""
        return None

    def attempt_ended(self, claim: Claim, token: Any, outcome: str, value: Any) -> None:
        """Outcome: completed, failed, suspended, cancelled, released, lost, or error (the
        attempt raised: its task was cancelled, the connection broke)."""

    def step_started(self, ctx: RunContext, kind: str, name: str, key: str) -> Any:
        """A step or transaction step runs (not a replay); the value comes back to step_ended."""
        return None

    def step_ended(
        self,
        ctx: RunContext,
        kind: str,
        name: str,
        key: str,
        token: Any,
        outcome: str,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        """Outcome: completed, failed (``error``), suspended (a far retry), interrupted."""

    def step_retried(
        self, ctx: RunContext, name: str, key: str, attempts: int, error: Exception, delay: float
    ) -> None:
        """Attempt ``attempts`` of a step failed and will be retried after ``delay`` seconds."""

    def claimed(self, lane: str, runs: int, seconds: float) -> None:
        """One claim of a worker's ``lane`` (sync, async) returned ``runs`` runs in ``seconds``."""

    def slots_changed(self, lane: str, delta: int) -> None:
        """``delta`` slots of a worker's lane became busy (positive) or free (negative)."""


class _Fanout(Observer):
    """Several observers (metrics and tracing), each called in turn; one failing never stops
    the run or the others."""

    def __init__(self, members: list[Observer]) -> None:
        self.members = members

    def attempt_started(self, claim: Claim) -> Any:
        return [_guard(o.attempt_started, claim) for o in self.members]

    def attempt_ended(self, claim: Claim, token: Any, outcome: str, value: Any) -> None:
        for o, t in zip(self.members, token, strict=True):
            _guard(o.attempt_ended, claim, t, outcome, value)

    def step_started(self, ctx: RunContext, kind: str, name: str, key: str) -> Any:
        return [_guard(o.step_started, ctx, kind, name, key) for o in self.members]

    def step_ended(self, ctx: Any, kind: str, name: str, key: str, token: Any, *rest: Any) -> None:
        for o, t in zip(self.members, token, strict=True):
            _guard(o.step_ended, ctx, kind, name, key, t, *rest)

    def step_retried(self, *args: Any) -> None:
        for o in self.members:
            _guard(o.step_retried, *args)

    def claimed(self, lane: str, runs: int, seconds: float) -> None:
        for o in self.members:
            _guard(o.claimed, lane, runs, seconds)

    def slots_changed(self, lane: str, delta: int) -> None:
        for o in self.members:
            _guard(o.slots_changed, lane, delta)


def _guard(hook: Any, *args: Any) -> Any:
    try:
        return hook(*args)
    except Exception:  # telemetry must never break a run
        return None


# None while nothing observes: the only thing the hot path reads.
observer: Observer | None = None
_installed: list[Observer] = []
_lock = threading.Lock()


def install(obs: Observer) -> None:
    """Turn ``obs`` on for every run this process executes, until ``uninstall(obs)``."""
    global observer
    with _lock:
        _installed.append(obs)  # twice when two workers install it: counted once
        observer = _Fanout(list(dict.fromkeys(_installed)))


def uninstall(obs: Observer) -> None:
    global observer
    with _lock:
        if obs in _installed:
            _installed.remove(obs)
        observer = _Fanout(list(dict.fromkeys(_installed))) if _installed else None


def observed_attempt(obs: Observer, claim: Claim, plan: Plan[Any]) -> Plan[Any]:
    """``plan`` (one attempt, _executor.execution) between attempt_started and attempt_ended."""
    token = obs.attempt_started(claim)
    try:
        outcome, value = yield from plan
    except BaseException as exc:
        obs.attempt_ended(claim, token, "error", exc)
        raise
    obs.attempt_ended(claim, token, outcome, value)
    return outcome, value


def seen_step(ctx: RunContext, kind: str, name: str, key: str, plan: Plan[Any]) -> Plan[Any]:
    """A step's ``plan`` as the observer sees it; the plan itself when nothing observes."""
    obs = observer
    return plan if obs is None else observed_step(obs, ctx, kind, name, key, plan)


def observed_step(
    obs: Observer, ctx: RunContext, kind: str, name: str, key: str, plan: Plan[Any]
) -> Plan[Any]:
    """``plan`` (a step's calls and its checkpoint) between step_started and step_ended."""
    token = obs.step_started(ctx, kind, name, key)
    began = time.perf_counter()
    try:
        value = yield from plan
    except BaseException as exc:
        outcome = (
            "suspended"
            if isinstance(exc, Suspended)
            else "interrupted"
            if isinstance(exc, (Released, Cancelled, LeaseLost)) or not isinstance(exc, Exception)
            else "failed"
        )
        obs.step_ended(ctx, kind, name, key, token, outcome, exc, time.perf_counter() - began)
        raise
    obs.step_ended(ctx, kind, name, key, token, "completed", None, time.perf_counter() - began)
    return value
