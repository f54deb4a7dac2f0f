"""Durable streams: values a run appends under a key, read live and resumably by anyone.

Offsets never depend on timing (how writes get theirs: _stream_writes.py). Readers start at any
offset, are woken by NOTIFY pgdurable_stream and end when the stream is closed or the run ended.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

import psycopg

from . import _codec
from ._db import call_sql
from ._durations import seconds
from ._errors import RunNotFound


class Database(Protocol):
    """What a reader needs of an App: its own connections, and the limits to decode with."""

    limits: _codec.Limits

    def listening(self, *queries: str) -> psycopg.Connection[Any]: ...


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
    # LISTEN before the first read: a value committed after that read is always notified.
    with app.listening("listen_stream", "listen_done") as conn:
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
