"""What a run asks of the outside world, as data. No I/O here.

Every durable operation (a step, a sleep, a wait, a checkpoint, a run's completion) is written
once, as a *plan*: a generator that yields these requests and receives their results (or has
their exceptions thrown into it). A driver (_drive.py) carries them out, on a sync Connection in
a thread or on an AsyncConnection on an event loop; that is the only place sync and async runs
differ. A plan never touches a connection, a clock or a thread itself.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sql:
    """Run the named engine query (sql/queries.sql) on the run's connection. ``fetch``: "one"
    returns the first row, "all" every row, "none" nothing (the statement's effect is all).
    ``commits``: the last request of an Atomic plan, sent with the transaction's COMMIT in one
    round trip (a driver may then report its error when the transaction ends, not here)."""

    name: str
    params: tuple[Any, ...]
    fetch: str = "none"
    commits: bool = False


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call user code: a workflow, a step, a compensation or a failure handler. A driver calls
    a plain function and awaits a coroutine function as its flavour allows. ``with_conn``
    passes the run's connection first (a transaction step, inside the open transaction)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    what: str
    with_conn: bool = False


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait in place (a short retry delay): ``time.sleep`` or ``asyncio.sleep``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Atomic:
    """Carry out the inner plan inside one transaction of the run's connection; its result is
    the inner plan's. An exception the inner plan raises rolls the transaction back."""

    plan: Generator[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class Blocking:
    """Call a blocking engine helper (a fresh connection after a disconnect, a pool check):
    inline on a sync driver, in a thread on an async one."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The run's connection broke: the driver has its pool replace dead connections now."""


Op = Sql | Invoke | Pause | Atomic | Blocking | ConnectionLost
Plan = Generator[Op, Any, T]

# The request types every driver must carry out (a test checks both drivers cover them).
OPERATIONS: tuple[type, ...] = (Sql, Invoke, Pause, Atomic, Blocking, ConnectionLost)
