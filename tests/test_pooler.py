"""pgdurable behind a REAL PgBouncer in transaction mode (Debian's pgbouncer 1.18, where
prepared statements break): the failure without pooler mode, workers and clients in pooler mode
(polling, or woken through a direct listen_dsn). A missing pgbouncer fails, never skips."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgdurable
from apps.support import query, running_worker, scalar, wait_until
from pgdurable._housekeeping import warn_if_pooled

PGBOUNCER = "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=1
        ) as c:
            c.execute("select 1", prepare=False)
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def bouncer(server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test server: its port. One server
    connection per database, so what any client left on it (a LISTEN, a prepared statement)
    is seen by all the others, as on a busy production pooler."""
    if not os.path.exists(PGBOUNCER):
        pytest.fail(
            f"{PGBOUNCER} is missing: the pooler tests need a real PgBouncer. Install it with "
            "`apt-get install -y pgbouncer` (Debian/Ubuntu), as .ci/run does"
        )
    server = conninfo_to_dict(server_dsn)
    user = str(server.get("user") or "postgres")
    port = _free_port()
    here = tmp_path_factory.mktemp("pgbouncer")
    (here / "userlist.txt").write_text(f'"{user}" ""\n')
    (here / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {here / 'userlist.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 100\ndefault_pool_size = 1\n"
    )
    # pgbouncer refuses to run as root; it reads its config before switching to -u's user
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    log = (here / "pgbouncer.log").open("w")
    proc = subprocess.Popen(
        [PGBOUNCER, *as_user, str(here / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (here / "pgbouncer.log").read_text()
                raise AssertionError(f"pgbouncer did not answer on port {port}: {log_text}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def through(dsn: str, port: int) -> str:
    """``dsn`` (a database of the test server) reached through the PgBouncer on ``port``."""
    params = conninfo_to_dict(dsn)
    params.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**params)


def build(dsn: str, **options: Any) -> pgdurable.App:
    app = pgdurable.App(dsn, lease=5.0, **options)

    @app.step()
    def add(a: int, b: int) -> int:
        return a + b

    @app.transaction()
    def record(conn: psycopg.Connection[Any], order: str, total: int) -> int:
        conn.execute("create table if not exists pooled_orders (id text primary key, total int)")
        conn.execute("insert into pooled_orders values (%s, %s)", (order, total))
        return total

    @app.workflow("order")
    def order(name: str) -> dict[str, Any]:
        total = add(2, 3)
        total = add(total, 10)
        record(name, total)
        pgdurable.sleep(timedelta(seconds=0.5))
        approval = pgdurable.wait_for_event(f"approved:{name}", timeout=timedelta(seconds=60))
        return {"total": total, "approval": approval}

    @app.workflow("twin")
    async def twin(n: int) -> int:
        await pgdurable.sleep_async(timedelta(seconds=0.2))
        return n * 2

    @app.workflow("quick")
    def quick(n: int) -> int:
        return n + 1

    return app


def pooled_channels(pooled: str) -> list[str]:
    """The channels the pooler's server connection LISTENs on (there is one: pool size 1)."""
    rows = query(pooled, "select pg_catalog.pg_listening_channels()")
    return [r[0] for r in rows]


def listeners(dsn: str) -> int:
    """Sessions of the test server LISTENing for worker wake-ups (what they last ran)."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    return int(
        scalar(
            dsn,
            "select count(*) from pg_stat_activity where datname = %s "
            "and query = 'listen pgdurable_wake;'",
            (dbname,),
        )
    )


def test_without_pooler_mode_prepared_statements_collide_and_listen_is_lost(
    dsn: str, bouncer: int
) -> None:
    pooled = through(dsn, bouncer)
    # Two clients through the pooler, no pooler mode: psycopg prepares _pg3_0 on whichever
    # server connection PgBouncer lent, and the second client meets the first one's there.
    errors: list[str] = []
    for _ in range(2):
        app = build(pooled)
        quick: Any = app.workflows["quick"]
        try:
            for i in range(3):
                quick.start(i)
        except psycopg.Error as exc:
            errors.append(f"{exc.sqlstate} {exc}")
        finally:
            app.close()
    assert errors, "expected prepared statements to break through PgBouncer transaction mode"
    assert any(e.startswith(("42P05", "26000")) for e in errors), errors
    # And a LISTEN through it hears nothing: its server connection went back to the pool.
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as ear:
        ear.execute("listen pgdurable_wake")
        query(dsn, "select pg_notify('pgdurable_wake', 'default')")
        assert list(ear.notifies(timeout=1.0)) == []


def test_pooler_mode_runs_steps_transactions_sleeps_and_events(dsn: str, bouncer: int) -> None:
    pooled = through(dsn, bouncer)
    app = build(pooled, pooler="transaction")
    order: Any = app.workflows["order"]
    twin: Any = app.workflows["twin"]
    try:
        with running_worker(app, concurrency=4, poll_interval=0.2) as worker:
            handles = [order.start(f"o-{i}") for i in range(4)]
            twins = [twin.start(i) for i in range(3)]
            wait_until(
                "every order to wait for its event",
                lambda: all(h.status() == "waiting" for h in handles),
                timeout=30,
            )
            for i in range(4):
                app.emit_event(f"approved:o-{i}", {"by": "ann"})
            results = [h.result(timeout=30) for h in handles]
            assert [t.result(timeout=30) for t in twins] == [0, 2, 4]

            async def awaited() -> int:
                h = await twin.start_async(21)
                return int(await h.result_async(timeout=30))

            assert asyncio.run(awaited()) == 42
            assert worker.failed == 0
            assert pooled_channels(pooled) == []
        assert results == [{"total": 15, "approval": {"by": "ann"}}] * 4
        rows = query(dsn, "select id, total from pooled_orders order by id")
        assert rows == [(f"o-{i}", 15) for i in range(4)]
        # the worker's registry row came and went through the pooler, and its exit timeouts
        # (SET LOCAL) stayed off the server connection the next client gets
        assert scalar(dsn, "select count(*) from pgdurable.workers") == 0
        assert scalar(pooled, "show statement_timeout") == "0"
        assert scalar(pooled, "show lock_timeout") == "0"
    finally:
        app.close()


def test_pooler_mode_without_listen_dsn_polls(dsn: str, bouncer: int) -> None:
    pooled = through(dsn, bouncer)
    app = build(pooled, pooler="transaction")
    quick: Any = app.workflows["quick"]
    try:
        with running_worker(app, concurrency=2, poll_interval=0.3):
            time.sleep(0.5)  # past the worker's first claim: only polling can find the run
            t0 = time.monotonic()
            h = quick.start(1)
            assert h.result(timeout=10) == 2
            took = time.monotonic() - t0
            # no LISTEN went through the pooler (worker or result()), none on the server
            assert pooled_channels(pooled) == []
            assert listeners(dsn) == 0
        # a poll (0.3 s), plus result()'s own one-second poll at worst
        assert took < 3.0, took
    finally:
        app.close()


def test_listen_dsn_wakes_the_worker_at_once(dsn: str, bouncer: int) -> None:
    pooled = through(dsn, bouncer)
    app = build(pooled, pooler="transaction", listen_dsn=dsn)
    quick: Any = app.workflows["quick"]
    try:
        # a poll interval far longer than the test: only a NOTIFY can wake the worker
        with running_worker(app, concurrency=2, poll_interval=60.0):
            wait_until("the worker to LISTEN on the direct dsn", lambda: listeners(dsn) == 1)
            time.sleep(0.3)  # past the worker's first claim
            t0 = time.monotonic()
            h = quick.start(1)
            assert h.result(timeout=10) == 2
            took = time.monotonic() - t0
            assert pooled_channels(pooled) == [], "the LISTEN belongs on the direct dsn"
        assert took < 2.0, f"took {took:.2f} s: the start did not wake the worker"
    finally:
        app.close()


def test_bad_pooler_is_refused_and_the_environment_is_read(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"^pooler must be 'transaction' .* got 'statement'"):
        pgdurable.App(dsn, pooler="statement")
    with pytest.raises(ValueError, match="session-mode pooler"):
        pgdurable.App(dsn, pooler="session")
    monkeypatch.setenv("PGDURABLE_POOLER", "txn")
    with pytest.raises(ValueError, match=r"^\$PGDURABLE_POOLER must be 'transaction'"):
        pgdurable.App(dsn)
    monkeypatch.setenv("PGDURABLE_POOLER", "transaction")
    monkeypatch.setenv("PGDURABLE_LISTEN_DSN", dsn)
    app = pgdurable.App("postgresql://app@pooler:6432/db")
    assert (app.pooler, app.listen_dsn, app.can_listen) == ("transaction", dsn, True)
    assert app.connection_kwargs == {"autocommit": True, "prepare_threshold": None}
    monkeypatch.delenv("PGDURABLE_LISTEN_DSN")
    assert pgdurable.App("postgresql://app@pooler:6432/db").can_listen is False
    monkeypatch.delenv("PGDURABLE_POOLER")
    assert pgdurable.App(dsn).connection_kwargs == {"autocommit": True}


def test_worker_warns_when_a_pooler_answers_without_pooler_mode(
    dsn: str, bouncer: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = pgdurable.App(through(dsn, bouncer), lease=5.0)
    try:
        with caplog.at_level("WARNING", logger="pgdurable.worker"):
            warn_if_pooled(app)
        assert "pooler='transaction'" in caplog.text
    finally:
        app.close()
    direct = pgdurable.App(dsn, lease=5.0)
    try:
        caplog.clear()
        with caplog.at_level("WARNING", logger="pgdurable.worker"):
            warn_if_pooled(direct)
        assert caplog.text == ""
    finally:
        direct.close()


def test_cli_worker_through_pgbouncer(dsn: str, bouncer: int, tmp_path: Path) -> None:
    """`pgdurable worker --pooler transaction --listen-dsn ...` runs a run started through the
    pooler."""
    env = dict(os.environ)
    env.pop("PGDURABLE_DSN", None)
    app = build(through(dsn, bouncer), pooler="transaction")
    quick: Any = app.workflows["quick"]
    h = quick.start(41)
    app.close()
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "pooled_app.py").write_text(
        "import pgdurable\napp = pgdurable.App()\n\n@app.workflow()\ndef quick(n: int) -> int:\n"
        "    return n + 1\n"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "pgdurable"),
            "worker",
            "pooled_app:app",
            "--dsn",
            through(dsn, bouncer),
            "--pooler",
            "transaction",
            "--listen-dsn",
            dsn,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            "the CLI worker to complete the run",
            lambda: (
                scalar(dsn, "select status from pgdurable.runs where id = %s", (h.run_id,))
                == "completed"
            ),
            timeout=20,
        )
        wait_until("the CLI worker to LISTEN on the direct dsn", lambda: listeners(dsn) == 1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "prepared statement" not in out, out
