"""Durable streams: values a run appends under a key, read live and resumably by anyone.

Offsets never depend on timing. A write from workflow code is a durable operation (a checkpoint
of kind 'stream', recorded with the value in one statement), so a replay sends nothing. A write
from a step or transaction step carries its origin, ``<position of the step>:<n>`` (its n-th
stream write in this attempt): a retried or replayed step rewrites the same origins, which the
engine recognises and skips. A transaction step's writes commit or roll back with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

import psycopg

from . import _codec
from ._context import RunContext, _current
from ._db import call_sql
from ._durations import seconds
from ._errors import NotInWorkflow, RunNotFound
from ._queries import Q


class Database(Protocol):
    """What a reader needs of an App: its own connections, and the limits to decode with."""

    limits: _codec.Limits

    def connect(self) -> psycopg.Connection[Any]: ...


MAX_KEY = 500
FINISHED = frozenset({"completed", "failed", "cancelled"})
BATCH = 1000


def check_key(key: object) -> str:
    """Raise unless ``key`` is a stream key: a string of 1 to 500 characters without NUL."""
    if not isinstance(key, str):
        raise TypeError(f"a stream key must be a string, got {type(key).__name__} {key!r}")
    if not key or len(key) > MAX_KEY or "\x00" in key:
        raise ValueError(
            f"a stream key must be 1 to {MAX_KEY} characters without NUL, got {key[:50]!r}"
            + ("..." if len(key) > 50 else "")
        )
    return key


def write_stream(key: str, value: Any, *, conn: psycopg.Connection[Any] | None = None) -> int:
    """Append ``value`` (JSON) to this run's stream ``key`` and wake its readers; returns its
    offset (0, 1, 2 ...).

    In workflow code the write is a durable operation: a replay never writes it again. In a
    step it is at-least-once like the step, yet never duplicated: a retry's n-th write is the
    first attempt's n-th value. In a transaction step it commits or rolls back with the
    step's transaction (``conn``, the connection the transaction step receives, is used by
    default; pass another connection to write in that connection's transaction instead).
    """
    check_key(key)
    ctx = _run_context("write_stream")
    body = _codec.checked(value, f"value of stream {key!r}", ctx.app.limits)
    if not ctx.in_step:
        _refuse_conn(conn, "write_stream")
        return _in_workflow(ctx, "write_stream_in_workflow", f"stream:{key}", (key, body), "0")
    origin = f"{_step_position(ctx)}:{_next_index(ctx, key)}"
    target = ctx.conn if conn is None else conn
    row = call_sql(target, "write_stream", (ctx.run_id, ctx.attempt, key, body, origin)).fetchone()
    return int(row[0])


def close_stream(key: str, *, conn: psycopg.Connection[Any] | None = None) -> int:
    """Close this run's stream ``key``: readers end once they have read every value, and
    further writes raise ``InvalidState``. Idempotent. Returns the closing offset (the number
    of values in the stream)."""
    check_key(key)
    ctx = _run_context("close_stream")
    if not ctx.in_step:
        _refuse_conn(conn, "close_stream")
        return _in_workflow(ctx, "close_stream_in_workflow", f"close:{key}", (key,), "close")
    origin = f"{_step_position(ctx)}:close"
    target = ctx.conn if conn is None else conn
    row = call_sql(target, "close_stream", (ctx.run_id, ctx.attempt, key, origin)).fetchone()
    return int(row[0])


def _run_context(what: str) -> RunContext:
    # Inside a step too (unlike _context.require): steps and transaction steps may write.
    ctx = _current.get()
    if ctx is None:
        raise NotInWorkflow(
            f"pgdurable.{what}() only works inside a workflow or one of its steps: a stream "
            "belongs to a run. Outside one, read streams with read_stream()"
        )
    return ctx


def _refuse_conn(conn: object, what: str) -> None:
    if conn is not None:
        raise TypeError(
            f"{what}(conn=...) is for transaction steps; in workflow code the write is a "
            "durable operation of its own, recorded on the run's connection"
        )


def _in_workflow(ctx: RunContext, query: str, name: str, args: tuple[Any, ...], suffix: str) -> int:
    """A write or close by workflow code: a durable operation, its checkpoint recorded in the
    same statement, so a replay returns the recorded offset and sends nothing."""
    pos, step_key, rec = ctx.next_op("stream", name)
    if rec is not None:
        return int(rec.output)
    ctx.check_alive()
    origin = f"{pos}:{suffix}"
    params = (ctx.run_id, ctx.attempt, *args, origin, ctx.run_id, ctx.attempt, pos, step_key, name)
    row = call_sql(ctx.conn, query, params).fetchone()
    return int(row[0])


def _step_position(ctx: RunContext) -> int:
    # The step being executed took the last position of the replay cursor before it ran.
    return ctx.seq - 1


def _next_index(ctx: RunContext, key: str) -> int:
    """This attempt's count of writes to ``key`` by the running step. Kept in ctx.counts under a
    name no operation can have (NUL), so it dies with the execution; a step attempt started
    later (a retry, a replay in another process) counts from 0 again."""
    attempt = ctx.step_attempt
    name = f"\x00stream\x00{_step_position(ctx)}\x00{attempt}\x00{key}"
    n = ctx.counts.get(name, 0)
    ctx.counts[name] = n + 1
    return n


# --- reading ------------------------------------------------------------------------------------


def read_stream(
    app: Database,
    run_id: UUID | str,
    key: str,
    start: int = 0,
    timeout: float | timedelta | None = None,
    *,
    poll_interval: float | timedelta = 1.0,
) -> Iterator[Any]:
    """Yield the values of stream ``key`` of run ``run_id`` from offset ``start``, as they are
    written, until the stream is closed or the run has ended and every value was read.

    Resume after a disconnect with ``start`` = the offset of the first value not yet received
    (``start`` + the number received). Woken by LISTEN/NOTIFY on a connection of its own, with
    a read every ``poll_interval`` seconds as the fallback. Raises ``TimeoutError`` when no
    value arrives for ``timeout`` seconds (None: wait as long as the run goes on), and
    ``RunNotFound`` if the run does not exist (or was deleted by gc). Close the generator (or
    let it go) to disconnect.
    """
    reading = Reading.checked(app.limits, run_id, key, start, timeout, poll_interval, "read_stream")
    return _read(app, reading)


class Reading:
    """One reader's place in a stream and every decision it takes: what to read next, which
    values a batch holds, whether the stream has ended, how long to wait and when to give up.
    The sync and async readers only do the I/O around it."""

    def __init__(
        self,
        limits: _codec.Limits,
        run_id: UUID,
        key: str,
        offset: int,
        timeout: float | None,
        poll: float,
    ) -> None:
        self.limits = limits
        self.run_id = run_id
        self.key = key
        self.offset = offset
        self.timeout = timeout
        self.poll = poll
        self.payload = f"{run_id}:{key}"
        self.wanted = {("pgdurable_stream", self.payload), ("pgdurable_done", str(run_id))}
        # the idle clock starts at the first read, not when the reader is made
        self.waited_since: float | None = None
        self.status = ""
        self.closed = False
        self.full = False

    @classmethod
    def checked(
        cls,
        limits: _codec.Limits,
        run_id: UUID | str,
        key: str,
        start: int,
        timeout: float | timedelta | None,
        poll_interval: float | timedelta,
        call: str,
    ) -> Reading:
        """A reading from ``start``, every argument of ``call(...)`` checked."""
        check_key(key)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= 2**31 - 1:
            raise ValueError(f"start must be an offset (an int >= 0), got {start!r}")
        limit = seconds(timeout, f"{call}() timeout")
        poll = seconds(
            poll_interval, f"{call}() poll_interval", allow_none=False, exclusive_minimum=True
        )
        try:
            rid = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        except ValueError:
            raise ValueError(f"run_id must be a run id (a UUID), got {run_id!r}") from None
        return cls(limits, rid, key, start, limit, poll)

    def params(self) -> tuple[Any, ...]:
        """The parameters of the ``read_stream`` query for the next batch."""
        return (self.key, self.offset, BATCH, self.run_id)

    def values(self, rows: list[Any]) -> Iterator[Any]:
        """The values of one ``read_stream`` batch, decoded; the offset moves past each value
        as it is taken, and the idle clock restarts when the taker comes back for more."""
        if not rows:
            raise RunNotFound(f"run {self.run_id} does not exist (or was deleted by gc)")
        if self.waited_since is None:
            self.waited_since = time.monotonic()
        self.status = rows[0][0]
        self.full = len(rows) == BATCH
        for _, seq, text, closed in rows:
            if seq is None:
                return
            if closed:
                self.closed = True
                return
            what = f"value {seq} of stream {self.key!r} of run {self.run_id}"
            value = _codec.loads(text, what, self.limits)
            self.offset = seq + 1
            yield value
            self.waited_since = time.monotonic()

    def ended(self) -> bool:
        """Closed, or the run finished with every value read: the status and the rows come
        from one snapshot, so nothing more can follow."""
        return self.closed or (not self.full and self.status in FINISHED)

    def wait(self) -> float:
        """Seconds to wait for a notification before reading again (0 after a full batch:
        read on at once); TimeoutError once the reader has been idle ``timeout`` seconds."""
        if self.full:
            return 0.0
        if self.timeout is None or self.waited_since is None:
            return self.poll
        left = self.waited_since + self.timeout - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"no value on stream {self.key!r} of run {self.run_id} for {self.timeout:g} s "
                f"(the run is {self.status}); read again from offset {self.offset} to keep "
                "waiting"
            )
        return min(self.poll, left)

    def wakes(self, channel: str, payload: str) -> bool:
        """Whether a notification may mean a new value or the end of this stream."""
        return (channel, payload) in self.wanted


def _read(app: Database, reading: Reading) -> Iterator[Any]:
    with app.connect() as conn:
        # LISTEN before the first read: a value committed after that read is always notified.
        conn.execute(Q["listen_stream"])
        conn.execute(Q["listen_done"])
        while True:
            _drain(conn)
            rows = call_sql(conn, "read_stream", reading.params()).fetchall()
            yield from reading.values(rows)
            if reading.ended():
                return
            wait = reading.wait()
            if wait > 0:
                _wait(conn, reading, wait)


def _drain(conn: psycopg.Connection[Any]) -> None:
    """Forget the notifications already received: the read that follows sees their values."""
    for _ in conn.notifies(timeout=0):
        pass


def _wait(conn: psycopg.Connection[Any], reading: Reading, wait: float) -> None:
    notes = conn.notifies(timeout=wait)
    try:
        for note in notes:
            if reading.wakes(note.channel, note.payload):
                return
    finally:
        notes.close()
