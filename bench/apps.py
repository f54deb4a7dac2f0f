"""The workflows the benchmark runs, registered the same way in the harness and in the worker
subprocesses it starts (``python -m bench.worker``)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pgdurable

# Each in-process workflow stores how long its loop of steps took, measured inside the workflow
# so that start / claim / complete are not charged to the steps.
TIMINGS: dict[str, float] = {}


@dataclass
class Marks:
    """Wake-latency probe: the step of run ``i`` records when it started running."""

    at: dict[int, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def mark(self, i: int) -> None:
        now = time.perf_counter()
        with self.cond:
            self.at[i] = now
            self.cond.notify_all()

    def wait(self, i: int, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: i in self.at, timeout)
            return self.at.get(i)


@dataclass
class BenchApp:
    app: pgdurable.App
    w1: Any
    w2: Any
    w3: Any
    w4: Any
    wake: Any
    event_wake: Any
    mem: Any
    marks: Marks


def build(dsn: str) -> BenchApp:
    app = pgdurable.App(dsn, worker_id=None)
    marks = Marks()

    @app.step()
    def noop() -> None:
        return None

    @app.step()
    def mark(i: int) -> None:
        marks.mark(i)

    @app.transaction()
    def insert_row(conn: Any, i: int) -> None:
        conn.execute("insert into bench_app (i) values (%s)", (i,))

    @app.workflow(name="bench_w1", queue="w1")
    def w1(n: int) -> int:
        t0 = time.perf_counter()
        for _ in range(n):
            noop()
        TIMINGS["w1"] = time.perf_counter() - t0
        return n

    @app.workflow(name="bench_w2", queue="w2")
    def w2(i: int) -> int:
        noop()
        noop()
        noop()
        return i

    @app.workflow(name="bench_w3", queue="w3")
    def w3(n: int) -> int:
        t0 = time.perf_counter()
        for i in range(n):
            insert_row(i)
        TIMINGS["w3"] = time.perf_counter() - t0
        return n

    @app.workflow(name="bench_w4", queue="w4")
    def w4(i: int) -> int:
        return i

    @app.workflow(name="bench_wake", queue="wake")
    def wake(i: int) -> None:
        mark(i)

    event_wake = None
    wait_for_event = getattr(pgdurable, "wait_for_event", None)
    if wait_for_event is not None and hasattr(app, "emit_event"):

        @app.workflow(name="bench_event_wake", queue="wake")
        def event_wake_fn(i: int) -> None:
            wait_for_event(f"bench-wake:{i}")
            mark(i)

        event_wake = event_wake_fn

    @app.workflow(name="bench_mem", queue="mem")
    def mem(i: int) -> int:
        noop()
        return i

    return BenchApp(app, w1, w2, w3, w4, wake, event_wake, mem, marks)


# --- async workflows (W1A, A1000) ---------------------------------------------------------------
# A separate App, so that the worker processes of W2 and MEM (which build the sync one) get no
# async lane and their figures stay what they were.

# Held runs (A1000) sit in a step that awaits this release; bench.worker calls release_held()
# on SIGUSR1. One asyncio.Event per event loop: waiting costs the loop nothing, unlike polling.
_RELEASED = threading.Event()
_RELEASE_EVENTS: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}


def release_held() -> None:
    """Let every held step of this process return (callable from any thread or a signal)."""
    _RELEASED.set()
    for loop, event in list(_RELEASE_EVENTS.items()):
        if not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


async def _until_released() -> None:
    loop = asyncio.get_running_loop()
    event = _RELEASE_EVENTS.setdefault(loop, asyncio.Event())
    # Registered before looking at the flag: a release in between sets this event too.
    if not _RELEASED.is_set():
        await event.wait()


@dataclass
class AsyncBenchApp:
    app: pgdurable.App
    w1a: Any
    active: Any
    sleeper: Any
    waiter: Any
    holder: Any


def build_async(dsn: str) -> AsyncBenchApp:
    app = pgdurable.App(dsn, worker_id=None)

    @app.step()
    async def anoop() -> None:
        return None

    @app.step()
    async def hold() -> None:
        await _until_released()

    @app.workflow(name="bench_w1a", queue="w1a")
    async def w1a(n: int) -> int:
        t0 = time.perf_counter()
        for _ in range(n):
            await anoop()
        TIMINGS["w1a"] = time.perf_counter() - t0
        return n

    @app.workflow(name="bench_a_active", queue="a1000")
    async def active(batch: int, n: int) -> int:
        for _ in range(n):
            await anoop()
        return batch

    @app.workflow(name="bench_a_sleep", queue="a1000")
    async def sleeper(i: int, secs: float) -> int:
        await pgdurable.sleep_async(secs)
        await anoop()
        return i

    @app.workflow(name="bench_a_wait", queue="a1000")
    async def waiter(i: int) -> Any:
        payload = await pgdurable.wait_for_event_async(f"bench-a1000:{i}")
        await anoop()
        return payload

    @app.workflow(name="bench_a_hold", queue="a1000")
    async def holder(i: int) -> int:
        await hold()
        return i

    return AsyncBenchApp(app, w1a, active, sleeper, waiter, holder)
