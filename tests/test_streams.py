"""Durable streams (issue 8, section 3): values a run appends under a key, read live.

What a user checks: a replay or a retried step never duplicates a value (a worker killed
mid-stream, a durable sleep between writes, a step retried after a failure); a transaction
step's values commit or roll back with it; a zombie's write is rejected; a reader resumes from
any offset, is woken by NOTIFY (not by its poll), ends on close and on the run's end, and times
out; gc removes a run's streams; fork keeps the values of the replayed operations; plain SQL
reads streams (and a client role may read but not write them); bad input is refused before
anything is written.

The SDK's public names (pgdurable.write_stream, RunHandle.read_stream) are not exported yet:
these tests call pgdurable._streams directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgdurable
from apps.support import query, running_worker, scalar, shift_clock, wait_for_file, wait_until
from conftest import PYTHON, ROOT
from pgdurable._stream_writes import close_stream, write_stream
from pgdurable._streams import read_stream


def stream(dsn: str, run_id: Any, key: str) -> list[Any]:
    """The values of a stream as plain SQL reads them, the closing row as the string CLOSED."""
    return [
        "CLOSED" if closed else value
        for value, closed in query(
            dsn,
            "select value, closed from pgdurable.streams where run_id = %s and stream_key = %s "
            "order by seq",
            (run_id, key),
        )
    ]


def readers(dsn: str) -> int:
    """Open reader sessions: their last statement is the SDK's stream read."""
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid() and query like '%%pgdurable.read_stream(r.id%%'",
        )
    )


class Reader:
    """read_stream in a thread, recording what it yields and how it ended."""

    def __init__(self, app: pgdurable.App, run_id: Any, key: str, **kw: Any) -> None:
        self.values: list[Any] = []
        self.ended: BaseException | str | None = None
        self.thread = threading.Thread(target=self._run, args=(app, run_id, key, kw), daemon=True)
        self.thread.start()

    def _run(self, app: pgdurable.App, run_id: Any, key: str, kw: dict[str, Any]) -> None:
        try:
            for value in read_stream(app, run_id, key, **kw):
                self.values.append(value)
            self.ended = "end"
        except BaseException as exc:
            self.ended = exc

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"reader still waiting; got {self.values}"


# --- replay never duplicates ---------------------------------------------------------------------


def test_writes_from_workflow_code_are_not_repeated_by_a_replay(app: pgdurable.App) -> None:
    executions: list[int] = []

    @app.step()
    def think(topic: str) -> str:
        write_stream("log", f"thinking about {topic}")
        return f"{topic}!"

    @app.workflow(name="st.replay")
    def wf(topic: str) -> str:
        executions.append(1)
        write_stream("log", "started")
        answer = think(topic)
        pgdurable.sleep(3600)  # the run leaves the worker and replays from the top
        assert write_stream("log", "woke up") == 2
        close_stream("log")
        return answer

    dsn = app.dsn
    with running_worker(app):
        handle = wf.start("tea")
        wait_until("the run to sleep", lambda: handle.status() == "sleeping")
        assert stream(dsn, handle.run_id, "log") == ["started", "thinking about tea"]
        shift_clock(dsn, "2 hours")
        assert handle.result(timeout=15) == "tea!"
    assert len(executions) == 2, "the sleep did not force a replay"
    assert stream(dsn, handle.run_id, "log") == [
        "started",
        "thinking about tea",
        "woke up",
        "CLOSED",
    ]
    assert list(read_stream(app, handle.run_id, "log")) == [
        "started",
        "thinking about tea",
        "woke up",
    ]
    assert [(s["step_key"], s["kind"]) for s in handle.steps()] == [
        ("stream:log", "stream"),
        ("think", "step"),
        ("sleep", "sleep"),
        ("stream:log#2", "stream"),
        ("close:log", "stream"),
    ]
    # a write's checkpoint holds its offset
    assert [s["output"] for s in handle.steps() if s["kind"] == "stream"] == [0, 2, 3]


def build(dsn: str) -> pgdurable.App:
    """The app of the worker process killed mid-stream (python -m apps.run_worker test_streams)."""
    app = pgdurable.App(dsn, lease=2.0)

    @app.step()
    def generate(n: int, gate: str) -> int:
        for i in range(n):
            write_stream("tokens", f"token {i} from pid {os.getpid()}")
            if i == 2:
                wait_for_file(gate)
        close_stream("tokens")
        return n

    @app.workflow(name="st.generate")
    def gen(n: int, gate: str) -> int:
        return generate(n, gate)

    return app


@pytest.mark.slow
def test_a_step_killed_mid_stream_is_rerun_without_duplicating_a_value(
    dsn: str, run_subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    app = build(dsn)
    gate = tmp_path / "gate"
    handle = app.start("st.generate", [6, str(gate)])
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [PYTHON, "-m", "apps.run_worker", "test_streams", "1"],
        cwd=ROOT / "tests",
        env=run_subprocess_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_until(
            "3 tokens from the worker process",
            lambda: len(stream(dsn, handle.run_id, "tokens")) == 3,
        )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    gate.touch()
    shift_clock(dsn, "1 minute")  # the dead worker's lease expires
    try:
        with running_worker(app):
            assert handle.result(timeout=20) == 6
    finally:
        app.close()
    first, here = f"from pid {proc.pid}", f"from pid {os.getpid()}"
    assert stream(dsn, handle.run_id, "tokens") == [
        f"token 0 {first}",
        f"token 1 {first}",
        f"token 2 {first}",
        f"token 3 {here}",
        f"token 4 {here}",
        f"token 5 {here}",
        "CLOSED",
    ]


def _flaky_stream_app(app: pgdurable.App, retry: pgdurable.Retry) -> Any:
    attempts: list[int] = []

    @app.step(retry=retry)
    def generate() -> int:
        attempts.append(1)
        n = len(attempts)
        for i in range(5):
            write_stream("tokens", f"attempt {n} token {i}")
            if n == 1 and i == 2:
                raise ConnectionResetError("the model's connection dropped")
        return n

    @app.workflow(name="st.flaky")
    def flaky() -> int:
        return generate()

    return flaky


def test_a_step_retried_later_keeps_the_values_of_its_first_attempt(app: pgdurable.App) -> None:
    # A long retry delay suspends the run: the retry is a new execution of the run.
    flaky = _flaky_stream_app(app, pgdurable.Retry(max_attempts=2, initial_delay=600))
    dsn = app.dsn
    with running_worker(app):
        handle = flaky.start()
        wait_until("the retry to be scheduled", lambda: handle.status() == "sleeping")
        shift_clock(dsn, "1 hour")
        assert handle.result(timeout=15) == 2
    assert stream(dsn, handle.run_id, "tokens") == [
        "attempt 1 token 0",
        "attempt 1 token 1",
        "attempt 1 token 2",
        "attempt 2 token 3",
        "attempt 2 token 4",
    ]


def test_a_step_retried_in_place_keeps_the_values_of_its_first_attempt(
    app: pgdurable.App,
) -> None:
    flaky = _flaky_stream_app(app, pgdurable.Retry(max_attempts=2, initial_delay=0))
    with running_worker(app):
        handle = flaky.start()
        assert handle.result(timeout=15) == 2
    assert stream(app.dsn, handle.run_id, "tokens") == [
        "attempt 1 token 0",
        "attempt 1 token 1",
        "attempt 1 token 2",
        "attempt 2 token 3",
        "attempt 2 token 4",
    ]


# --- transaction steps -------------------------------------------------------------------------


def test_a_transaction_steps_values_commit_and_roll_back_with_it(app: pgdurable.App) -> None:
    dsn = app.dsn
    query(dsn, "create table orders (id text primary key)")
    tries: list[str] = []

    @app.transaction(retry=pgdurable.Retry(max_attempts=2, initial_delay=0))
    def place(conn: psycopg.Connection[Any], order: str) -> str:
        tries.append(order)
        conn.execute("insert into orders (id) values (%s)", (order,))
        write_stream("events", f"order {order} placed (try {len(tries)})", conn=conn)
        if len(tries) == 1:
            raise RuntimeError("deadlock detected, say")
        return order

    @app.transaction(retry=pgdurable.Retry(max_attempts=1))
    def refuse(conn: psycopg.Connection[Any], order: str) -> None:
        conn.execute("insert into orders (id) values (%s)", (order,))
        write_stream("events", f"order {order} placed")  # the run's connection: this transaction
        raise pgdurable.NonRetryableError(f"order {order} refused")

    @app.workflow(name="st.tx")
    def orders() -> str:
        place("o-1")
        try:
            refuse("o-2")
        except pgdurable.NonRetryableError:
            write_stream("events", "order o-2 refused")
        pgdurable.sleep(3600)  # replay: the committed transaction is not run again
        return "done"

    with running_worker(app):
        handle = orders.start()
        wait_until("the run to sleep", lambda: handle.status() == "sleeping")
        shift_clock(dsn, "2 hours")
        assert handle.result(timeout=15) == "done"
    assert tries == ["o-1", "o-1"]
    assert query(dsn, "select id from orders") == [("o-1",)]
    assert stream(dsn, handle.run_id, "events") == [
        "order o-1 placed (try 2)",
        "order o-2 refused",
    ]


# --- fencing -------------------------------------------------------------------------------------


def test_a_zombies_write_is_rejected(app: pgdurable.App, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    seen: list[BaseException] = []

    @app.step(retry=pgdurable.Retry(max_attempts=1))
    def generate() -> None:
        write_stream("tokens", "before")
        wait_for_file(gate)
        try:
            write_stream("tokens", "after the takeover")
        except BaseException as exc:
            seen.append(exc)
            raise

    @app.workflow(name="st.zombie")
    def zombie() -> None:
        generate()

    dsn = app.dsn
    with running_worker(app):
        handle = zombie.start()
        wait_until("the first value", lambda: stream(dsn, handle.run_id, "tokens"))
        # The lease expires and another worker takes the run over, in one transaction (else
        # this worker's own tick might take it back first).
        with psycopg.connect(dsn) as thief:
            thief.execute("select pgdurable.shift_clock('1 minute')")
            taken = thief.execute(
                "select attempt from pgdurable.claim_run(%s, 'thief')", (handle.run_id,)
            ).fetchall()
        assert taken == [(2,)]
        gate.touch()
        wait_until("the zombie's write to fail", lambda: seen)
    assert isinstance(seen[0], pgdurable.LeaseLost), seen
    assert stream(dsn, handle.run_id, "tokens") == ["before"]

    # In SQL: the stale attempt is refused (PD002), the current one writes.
    with pytest.raises(psycopg.Error, match="lease lost") as refused:
        query(dsn, """select pgdurable.write_stream(%s, 1, 'tokens', '"late"')""", (handle.run_id,))
    assert refused.value.sqlstate == "PD002"
    with pytest.raises(psycopg.Error, match="lease lost"):
        query(dsn, "select pgdurable.close_stream(%s, 1, 'tokens')", (handle.run_id,))
    assert (
        scalar(
            dsn, """select pgdurable.write_stream(%s, 2, 'tokens', '"thief"')""", (handle.run_id,)
        )
        == 1
    )
    assert stream(dsn, handle.run_id, "tokens") == ["before", "thief"]


# --- readers -------------------------------------------------------------------------------------


def test_a_reader_resumes_from_any_offset(app: pgdurable.App) -> None:
    @app.workflow(name="st.count")
    def count(n: int) -> int:
        for i in range(n):
            write_stream("numbers", i)
        close_stream("numbers")
        return n

    dsn = app.dsn
    with running_worker(app):
        handle = count.start(10)
        assert handle.result(timeout=15) == 10
    first = read_stream(app, handle.run_id, "numbers")
    got = [next(first) for _ in range(4)]
    assert got == [0, 1, 2, 3]
    assert readers(dsn) == 1
    first.close()  # the client disconnects
    wait_until("the reader's session to end", lambda: readers(dsn) == 0)
    assert list(read_stream(app, handle.run_id, "numbers", start=len(got))) == [4, 5, 6, 7, 8, 9]
    assert list(read_stream(app, str(handle.run_id), "numbers", start=9)) == [9]
    assert list(read_stream(app, handle.run_id, "numbers", start=10)) == []
    assert list(read_stream(app, handle.run_id, "numbers", start=1000)) == []
    assert list(read_stream(app, handle.run_id, "numbers")) == list(range(10))
    assert list(read_stream(app, handle.run_id, "no such key")) == []


def test_a_reader_is_woken_by_notify_and_ends_when_the_stream_closes(
    app: pgdurable.App, tmp_path: Path
) -> None:
    @app.step()
    def generate(gates: str) -> None:
        for i in range(3):
            wait_for_file(Path(gates) / str(i))
            write_stream("tokens", f"token {i}")
        close_stream("tokens")

    @app.workflow(name="st.live")
    def live(gates: str) -> str:
        generate(gates)
        # the stream is closed while the run goes on: readers end anyway
        return str(pgdurable.wait_for_event(f"st.live.done:{gates}"))

    with running_worker(app):
        handle = live.start(str(tmp_path))
        # a poll every 60 s: a value seen within 10 s came by NOTIFY
        reader = Reader(app, handle.run_id, "tokens", poll_interval=60)
        wait_until("the reader to listen", lambda: readers(app.dsn) == 1)
        for i in range(3):
            (tmp_path / str(i)).touch()
            wait_until(f"token {i} at the reader", lambda i=i: len(reader.values) == i + 1, 10)
        reader.join(10)
        assert reader.ended == "end"
        assert reader.values == ["token 0", "token 1", "token 2"]
        # the reader ended at the close, not at the run's end: the run goes on to its wait
        wait_until("the run to wait for its event", lambda: handle.status() == "waiting")
        app.emit_event(f"st.live.done:{tmp_path}", "bye")
        assert handle.result(timeout=15) == "bye"


def test_a_reader_ends_when_the_run_ends(app: pgdurable.App) -> None:
    @app.workflow(name="st.ends")
    def ends(tag: str) -> str:
        write_stream("log", "waiting")
        outcome = pgdurable.wait_for_event(f"st.ends:{tag}")
        write_stream("log", f"got {outcome}")
        if outcome == "fail":
            raise RuntimeError("told to fail")
        return str(outcome)

    with running_worker(app):
        completed, failed, cancelled = ends.start("c"), ends.start("f"), ends.start("x")
        for handle in (completed, failed, cancelled):
            wait_until("the run to wait", lambda h=handle: h.status() == "waiting")
        live = {
            h: Reader(app, h.run_id, "log", poll_interval=60)
            for h in (completed, failed, cancelled)
        }
        for reader in live.values():
            wait_until("the reader's first value", lambda r=reader: r.values == ["waiting"])
        app.emit_event("st.ends:c", "done")
        app.emit_event("st.ends:f", "fail")
        assert cancelled.cancel() == "cancelled"
        for handle, reader in live.items():
            reader.join(10)  # woken by the run's end, not by the 60 s poll
            assert reader.ended == "end", (handle, reader.ended)
    assert live[completed].values == ["waiting", "got done"]
    assert live[failed].values == ["waiting", "got fail"]
    assert live[cancelled].values == ["waiting"]
    assert failed.status() == "failed"


def test_a_reader_times_out_when_no_value_comes(app: pgdurable.App) -> None:
    @app.workflow(name="st.quiet")
    def quiet() -> Any:
        write_stream("log", "one")
        return pgdurable.wait_for_event("st.quiet.never")

    with running_worker(app):
        handle = quiet.start()
        wait_until("the run to wait", lambda: handle.status() == "waiting")
    got: list[Any] = []
    with pytest.raises(TimeoutError, match=r"no value on stream 'log' .* read again from offset 1"):
        for value in read_stream(app, handle.run_id, "log", timeout=0.3):
            got.append(value)
    assert got == ["one"]
    with pytest.raises(TimeoutError):
        next(read_stream(app, handle.run_id, "log", start=1, timeout=0.2))


# --- gc, fork, SQL --------------------------------------------------------------------------------


def test_gc_removes_a_runs_streams_with_it(app: pgdurable.App) -> None:
    @app.workflow(name="st.gc")
    def gc_me(wait: bool) -> None:
        write_stream("log", "kept until gc")
        if wait:
            pgdurable.wait_for_event("st.gc.never")

    dsn = app.dsn
    with running_worker(app):
        done, waiting = gc_me.start(False), gc_me.start(True)
        done.result(timeout=15)
        wait_until("the other run to wait", lambda: waiting.status() == "waiting")
    assert scalar(dsn, "select count(*) from pgdurable.streams") == 2
    assert scalar(dsn, "select pgdurable.gc_runs('0 seconds')") == 1
    assert query(dsn, "select run_id from pgdurable.streams") == [(waiting.run_id,)]


def test_a_fork_keeps_the_values_of_the_operations_it_replays(app: pgdurable.App) -> None:
    ran: list[str] = []

    @app.step()
    def draft() -> str:
        ran.append("draft")
        write_stream("text", "Once upon")
        write_stream("text", "a time")
        return "draft"

    @app.workflow(name="st.fork")
    def story() -> str:
        write_stream("text", "Title")
        draft()
        ran.append("ending")
        write_stream("text", "The end")
        close_stream("text")
        return "told"

    dsn = app.dsn
    with running_worker(app):
        original = story.start()
        assert original.result(timeout=15) == "told"
        fork_id = scalar(dsn, "select pgdurable.fork_run(%s, 2)", (original.run_id,))
        assert app.handle(fork_id).result(timeout=15) == "told"
    assert ran == ["draft", "ending", "ending"]
    expected = ["Title", "Once upon", "a time", "The end", "CLOSED"]
    assert stream(dsn, original.run_id, "text") == expected
    assert stream(dsn, fork_id, "text") == expected


def test_a_worker_in_any_language_writes_and_psql_reads_a_stream(app: pgdurable.App) -> None:
    dsn = app.dsn
    with psycopg.connect(dsn, autocommit=True) as go:
        run_id = go.execute(
            "select pgdurable.start_run('go.speak', '{}', '{\"workflow_id\": \"go-1\"}')"
        ).fetchone()[0]
        (attempt,) = go.execute(
            "select attempt from pgdurable.claim_run(%s, 'go-worker')", (run_id,)
        ).fetchone()
        for word in ("hello", "from", "go"):
            go.execute(
                "select pgdurable.write_stream(%s, %s, 'words', %s::jsonb)",
                (run_id, attempt, f'"{word}"'),
            )
        # a retried write names its origin: the engine returns the first write's offset
        assert go.execute(
            """select pgdurable.write_stream(%s, %s, 'words', '"!"', 'punct'), """
            """pgdurable.write_stream(%s, %s, 'words', '"!"', 'punct')""",
            (run_id, attempt, run_id, attempt),
        ).fetchone() == (3, 3)
        assert go.execute(
            "select pgdurable.close_stream(%s, %s, 'words')", (run_id, attempt)
        ).fetchone() == (4,)
        assert go.execute(
            "select pgdurable.close_stream(%s, %s, 'words')", (run_id, attempt)
        ).fetchone() == (4,)
        go.execute("""select pgdurable.complete_run(%s, %s, '"spoken"')""", (run_id, attempt))
    assert list(read_stream(app, run_id, "words")) == ["hello", "from", "go", "!"]
    assert query(
        dsn,
        "select seq, value, closed, run_status from pgdurable.read_stream(%s, 'words', 2, 10)",
        (run_id,),
    ) == [(2, "go", False, "completed"), (3, "!", False, "completed"), (4, None, True, "completed")]
    assert query(
        dsn,
        "select r.workflow_id, string_agg(s.value #>> '{}', ' ' order by s.seq) "
        "from pgdurable.streams s join pgdurable.runs r on r.id = s.run_id "
        "where not s.closed group by 1",
    ) == [("go-1", "hello from go !")]


def _as_user(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    return make_conninfo(**params)


@pytest.fixture
def client_login(server_dsn: str, dsn: str) -> Iterator[str]:
    """A LOGIN role (unique name, dropped after the test) granted pgdurable_client."""
    name = f"pgd_streams_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login in role pgdurable_client").format(sql.Identifier(name))
        )
    try:
        yield _as_user(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_a_client_reads_streams_but_cannot_write_one(app: pgdurable.App, client_login: str) -> None:
    @app.workflow(name="st.client")
    def speak() -> Any:
        write_stream("words", "hi")
        return pgdurable.wait_for_event("st.client.never")

    with running_worker(app):
        handle = speak.start()
        wait_until("the run to wait", lambda: handle.status() == "waiting")
    run_id, attempt = handle.run_id, scalar(app.dsn, "select attempt from pgdurable.runs")
    assert query(client_login, "select value from pgdurable.streams") == [("hi",)]
    assert query(
        client_login, "select value from pgdurable.read_stream(%s, 'words')", (run_id,)
    ) == [("hi",)]
    client = pgdurable.App(client_login)
    try:
        assert next(read_stream(client, run_id, "words")) == "hi"
    finally:
        client.close()
    for statement in (
        """select pgdurable.write_stream(%s, %s, 'words', '"forged"')""",
        "select pgdurable.close_stream(%s, %s, 'words')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            query(client_login, statement, (run_id, attempt))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        query(client_login, "delete from pgdurable.streams")


# --- bad input -----------------------------------------------------------------------------------


def test_bad_keys_and_values_are_refused_before_anything_is_written(dsn: str) -> None:
    app = pgdurable.App(dsn, lease=2.0, limits=pgdurable.Limits(max_bytes=2048))

    @app.workflow(name="st.bad")
    def bad() -> list[str]:
        errors = []
        for key, value in (
            ("nul\x00key", 1),
            ("", 1),
            ("k" * 501, 1),
            (42, 1),
            ("big", "x" * 5000),
            ("nan", {"a": float("nan")}),
        ):
            try:
                write_stream(key, value)  # type: ignore[arg-type]
            except (ValueError, TypeError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        try:
            close_stream("nul\x00key")
        except ValueError as exc:
            errors.append(f"close: {exc}")
        return errors

    try:
        with running_worker(app):
            errors = bad.start().result(timeout=15)
    finally:
        app.close()
    assert len(errors) == 7, errors
    assert errors[0].startswith("ValueError: a stream key must be 1 to 500 characters without NUL")
    assert "'nul\\x00key'" in errors[0]
    assert errors[3].startswith("TypeError: a stream key must be a string, got int 42")
    assert errors[4].startswith("SerializationError: value of stream 'big' is")
    assert "over the limit of 2048 bytes" in errors[4]
    assert errors[5].startswith("SerializationError: value of stream 'nan'['a'] is nan")
    assert errors[6].startswith("close: a stream key must be")
    assert scalar(dsn, "select count(*) from pgdurable.streams") == 0
    assert scalar(dsn, "select count(*) from pgdurable.checkpoints where kind = 'stream'") == 0


def test_the_sql_functions_refuse_bad_input_with_pd_sqlstates(dsn: str) -> None:
    query(dsn, "update pgdurable.settings set max_value_bytes = 1024")
    with psycopg.connect(dsn, autocommit=True) as c:
        run = c.execute("select pgdurable.start_run('st.sqlbad')").fetchone()[0]
        (att,) = c.execute("select attempt from pgdurable.claim_run(%s, 'w')", (run,)).fetchone()
        c.execute("select pgdurable.close_stream(%s, %s, 'closed')", (run, att))
    write = "select pgdurable.write_stream(%s, %s, "
    cases: list[tuple[str, str, tuple[Any, ...], str]] = [
        ("PD003", write + "'', '1')", (run, att), "stream key must be 1 to 500 characters"),
        ("PD003", write + "null, '1')", (run, att), "stream key must be 1 to 500 characters"),
        ("PD003", write + "repeat('k', 501), '1')", (run, att), "1 to 500 characters"),
        ("PD003", write + "'k', '1', '')", (run, att), "origin must be 1 to 200 characters"),
        (
            "PD003",
            write + "'big', to_jsonb(repeat('x', 5000)))",
            (run, att),
            "value of stream big is .* bytes, over the limit of 1024",
        ),
        ("PD006", write + "'closed', '1')", (run, att), "stream 'closed' of run .* is closed"),
        ("PD002", write + "'k', '1')", (run, att + 1), "lease lost"),
        ("PD001", write + "'k', '1')", (uuid.uuid4(), 1), "does not exist"),
        ("PD004", "select * from pgdurable.read_stream(%s, 'k', -1)", (run,), "p_from_seq >= 0"),
        ("PD004", "select * from pgdurable.read_stream(%s, 'k', 0, 0)", (run,), "p_limit from 1"),
        ("PD001", "select * from pgdurable.read_stream(%s, 'k')", (uuid.uuid4(),), "not exist"),
    ]
    for state, statement, params, message in cases:
        with pytest.raises(psycopg.Error, match=message) as exc:
            query(dsn, statement, params)
        assert exc.value.sqlstate == state, statement
    assert stream(dsn, run, "closed") == ["CLOSED"]
    assert scalar(dsn, "select count(*) from pgdurable.streams") == 1


def test_outside_a_run_writes_are_refused_and_reads_checked(app: pgdurable.App) -> None:
    with pytest.raises(
        pgdurable.NotInWorkflow, match=r"write_stream\(\) only works inside a workflow"
    ):
        write_stream("k", 1)
    with pytest.raises(pgdurable.NotInWorkflow, match=r"close_stream\(\)"):
        close_stream("k")
    missing = uuid.uuid4()
    with pytest.raises(ValueError, match="start must be an offset"):
        read_stream(app, missing, "k", start=-1)
    with pytest.raises(ValueError, match="timeout"):
        read_stream(app, missing, "k", timeout=float("nan"))
    with pytest.raises(ValueError, match="without NUL"):
        read_stream(app, missing, "k\x00")
    with pytest.raises(ValueError, match="run_id must be a run id"):
        read_stream(app, "order-1", "k")
    with pytest.raises(pgdurable.RunNotFound, match=str(missing)):
        next(read_stream(app, missing, "k"))


def test_a_value_written_early_in_a_transaction_step_does_not_block_heartbeats(
    app: pgdurable.App, tmp_path: Path
) -> None:
    """The write's fence lets the worker's heartbeat (one statement for all its runs) update the
    run row while the transaction step is still open: else every run of that worker would wait
    for the slowest transaction step and might lose its lease."""
    gate = tmp_path / "gate"

    @app.transaction()
    def slow(conn: psycopg.Connection[Any]) -> None:
        write_stream("log", "in the transaction")
        wait_for_file(gate)

    @app.workflow(name="st.slowtx")
    def slowtx() -> None:
        slow()

    dsn = app.dsn
    with running_worker(app):
        handle = slowtx.start()
        wait_until(
            "the transaction step to have written",
            lambda: scalar(
                dsn,
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and state = 'idle in transaction' "
                "and query like 'select pgdurable.write_stream(%%'",
            ),
        )
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("set statement_timeout = '5s'")
            c.execute(
                "select * from pgdurable.heartbeat('probe', array[%s]::uuid[], array[1], 30)",
                (handle.run_id,),
            )
        gate.touch()
        handle.result(timeout=15)
    assert stream(dsn, handle.run_id, "log") == ["in the transaction"]
